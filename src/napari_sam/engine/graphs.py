"""Clicks replayed from CUDA graphs: a GPU click without Python's per-kernel launch overhead.

A click on a GPU is a few hundred small kernels (prompt encoder, two-way transformer, upscaling,
mask resize), each costing more to launch from Python than to run. :class:`GraphCache` captures
such a call once per input shape (a "key": the number of points, box or not, mask or not, the
image's sizes, ...) into a ``torch.cuda.CUDAGraph`` and then replays it: the new inputs are copied
into the captured (static) input tensors, the graph runs, and copies of its outputs are returned
(never the static outputs themselves, which the next replay overwrites).

A key is captured the second time it is seen (the first call runs eagerly: a shape used once, e.g.
an image of a size seen once, costs no capture), or ahead of time with :meth:`GraphCache.warm`
(the predictor warms a slice's first click in the widget's background encode job). With
``capture=False`` (a CPU) the same bookkeeping runs and the function is simply called on the
static inputs: how the tests cover this code without a GPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

Fn = Callable[..., tuple[Tensor, ...]]


class CapturedCall:
    """``fn(*inputs)`` with static copies of ``inputs`` (None entries stay None), captured into a
    CUDA graph when ``capture`` (after two warm-up calls on a side stream, as CUDA graphs need)."""

    def __init__(self, fn: Fn, inputs: Sequence[Tensor | None], capture: bool) -> None:
        self.fn = fn
        self.static_in = tuple(None if t is None else t.clone() for t in inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_out: tuple[Tensor, ...] | None = None
        if capture:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    fn(*self.static_in)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.static_out = fn(*self.static_in)

    def __call__(self, inputs: Sequence[Tensor | None]) -> tuple[Tensor, ...]:
        for static, new in zip(self.static_in, inputs, strict=True):
            if static is not None:
                static.copy_(new)
        if self.graph is None:
            return tuple(t.clone() for t in self.fn(*self.static_in))
        self.graph.replay()
        return tuple(t.clone() for t in self.static_out)


class GraphCache:
    """Calls keyed by their input shapes, captured on a key's second use (or :meth:`warm`), the
    ``max_graphs`` most recently used kept (each holds its own GPU memory pool). Thread-safe: a
    worker thread may warm a key while the GUI thread replays another."""

    def __init__(self, capture: bool, max_graphs: int = 8) -> None:
        self.capture = capture
        self.max_graphs = max_graphs
        self._calls: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._calls)

    def __call__(self, key: Hashable, fn: Fn, inputs: Sequence[Tensor | None]) -> tuple[Tensor, ...]:
        """``fn(*inputs)`` (a tuple of tensors, fresh ones: no static output is handed out)."""
        with self._lock:
            call = self._calls.get(key)
            if call is None and key not in self._seen:
                self._seen.add(key)
                return tuple(fn(*inputs))
            if call is None:
                call = self._add(key, fn, inputs)
            self._calls.move_to_end(key)
            return call(inputs)

    def warm(self, key: Hashable, fn: Fn, inputs: Sequence[Tensor | None]) -> None:
        """Capture ``key`` now (nothing when it is already captured)."""
        with self._lock:
            if key not in self._calls:
                self._seen.add(key)
                self._add(key, fn, inputs)

    def _add(self, key: Hashable, fn: Fn, inputs: Sequence[Tensor | None]) -> CapturedCall:
        call = self._calls[key] = CapturedCall(fn, inputs, self.capture)
        while len(self._calls) > self.max_graphs:
            self._calls.popitem(last=False)
        return call
