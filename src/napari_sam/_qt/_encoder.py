"""Background encoding: one ``thread_worker`` at a time, the latest request queued behind it.

After the requested slice of an nD in-memory (numpy) image, the neighbours along the last slider
axis (``prefetch_radius`` on each side, nearest first) are encoded too while the runner is idle, so
stepping through a stack costs decoder time only. A new request always goes before them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from napari_sam._qt._threads import start as start_worker
from napari_sam.errors import SamUserError


class EncodeRunner:
    """Encodes slices for a ``SegmentAnything`` in a worker thread (napari progress in the activity dock).

    Installed as ``sam.request_embedding``: the viewer object asks for a slice, the runner encodes it
    off the event loop, stores it in the cache and re-runs the preview.
    """

    def __init__(self, sam: Any) -> None:
        self.sam = sam
        self.worker: Any = None
        self._busy_key: tuple | None = None
        self._pending: tuple[int, ...] | None = None
        self._pending_set = False
        self.closed = False
        self.prefetch_radius = 1  # neighbours encoded ahead on each side (0: off)
        self._prefetch: list[tuple[int, ...]] = []
        sam.request_embedding = self.request

    @property
    def busy(self) -> bool:
        """True while a slice is being encoded."""
        return self.worker is not None

    def request(self, index: tuple[int, ...] | None = None, prefetch: bool = True) -> None:
        """Encode slice ``index`` (None: on screen) unless cached or in flight; notifies user errors.

        ``prefetch``: afterwards also encode the slice's neighbours (see the module doc).
        """
        if self.closed or self.sam.image_layer is None or self.sam.predictor is None:
            return
        try:
            key, job = self.sam.encode_job(index)
        except SamUserError as exc:
            show_error(str(exc))
            return
        if prefetch:
            self._prefetch = self._neighbours(key[1])
        if key in self.sam.cache or key == self._busy_key:
            self._next()
            return
        emb = self.sam.stored_embedding(key[1])
        if emb is not None:  # a stack store has it (precomputed or propagated)
            self.sam.store_embedding(key, emb)
            self._on_returned(key, emb)
            self._next()
            return
        if self.worker is not None:
            self._pending, self._pending_set = key[1] if index is None else tuple(index), True
            return
        self._busy_key = key
        name = getattr(self.sam.image_layer, "name", "image")
        desc = f"SAM: encoding {name}" + (f" slice {key[1]}" if key[1] else "")
        if getattr(job, "steps", 1) > 1:  # tiles: the bar counts encoder runs
            worker = create_worker(job.iterate, _progress={"total": job.steps, "desc": desc}, _ignore_errors=True)
        else:
            worker = create_worker(job, _progress={"total": 0, "desc": desc}, _ignore_errors=True)
        worker.returned.connect(lambda emb, k=key: self._on_returned(k, emb))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        start_worker(worker)

    def _on_returned(self, key: tuple, embedding: Any) -> None:
        if self.closed:
            return
        self.sam.store_embedding(key, embedding)
        try:
            index = self.sam.current_index() if self.sam.image_layer is not None else None
        except SamUserError:
            index = None
        if index is not None and self.sam.embedding_key(index) == key:
            self.sam.update_preview()

    def _on_errored(self, exc: BaseException) -> None:
        if self.closed or self._stale(self._busy_key):
            return  # the model or its device changed under the encode (weights moved): it is re-encoded
        if isinstance(exc, SamUserError):  # e.g. too many tiles: the message says what to do
            show_error(f"SAM: {exc}")
        else:
            show_error(f"SAM: encoding failed: {type(exc).__name__}: {exc}")

    def _stale(self, key: tuple | None) -> bool:
        """Whether ``key``'s slice would now be encoded with other settings (model, device, tiles ...)."""
        if key is None or self.sam.image_layer is None:
            return key is not None
        try:
            return self.sam.embedding_key(key[1]) != key
        except SamUserError:  # the slice is gone (another image)
            return True

    def _on_finished(self) -> None:
        self.worker, self._busy_key = None, None
        if self._pending_set and not self.closed:
            index, self._pending, self._pending_set = self._pending, None, False
            self.request(index)
        else:
            self._next()

    def _neighbours(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        img = self.sam.image_layer
        if not index or self.prefetch_radius <= 0 or not isinstance(getattr(img, "data", None), np.ndarray):
            return []
        if self.sam.channel_axis == len(index) - 1 and not img.rgb:
            return []  # the slider axis is the composite's channel axis
        n = int(img.data.shape[len(index) - 1])
        near = [index[-1] + s * d for d in range(1, self.prefetch_radius + 1) for s in (1, -1)]
        return [(*index[:-1], z) for z in near if 0 <= z < n]

    def _next(self) -> None:
        """Encode the next neighbour still missing (only when idle)."""
        while self._prefetch and self.worker is None and not self.closed:
            index = self._prefetch.pop(0)
            try:
                key = self.sam.embedding_key(index)
            except SamUserError:
                continue
            if key not in self.sam.cache:
                self.request(index, prefetch=False)

    def close(self) -> None:
        """Stop reacting to results (the running encode finishes in its thread and is dropped)."""
        self.closed = True
        if self.sam.request_embedding == self.request:
            self.sam.request_embedding = None
        if self.worker is not None:
            self.worker.quit()
