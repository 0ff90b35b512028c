"""Many objects on one image in bounded memory: ``SamPredictor.predict_batch`` decodes in chunks.

One decoder call on B objects holds B times the decoder's intermediates (the upscaled embedding, the
full-size logits): thousands of boxes in one call ran out of memory. The prompts (already validated,
in model-input coordinates) are decoded ``chunk_size`` objects at a time into preallocated outputs,
with the project's progress/cancel contract (``napari_sam.engine.progress``) between chunks. The
outputs themselves are B masks of the image's size: when they alone would exceed
``MAX_BATCH_OUTPUT_BYTES``, :func:`check_output_size` refuses before any work with
``TooMuchWorkError``, and :func:`iter_chunks` (``SamPredictor.iter_predict_batch``) gives the chunks
one by one instead, so memory stays bounded whatever B.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from napari_sam.engine.progress import Cancel, Progress, check_cancel
from napari_sam.errors import SamUserError, TooMuchWorkError

DECODE_CHUNK = 32
"""Objects per decoder call in ``predict_batch`` (results do not depend on it beyond float rounding)."""

CHUNK_BYTES = 256 << 20
"""A chunk's outputs are kept under this (256 MiB): fewer than ``DECODE_CHUNK`` objects per decoder
call on large images (:func:`fit_chunk`), so ``iter_predict_batch`` stays bounded at any image size."""

MAX_BATCH_OUTPUT_BYTES = 4 << 30
"""``predict_batch`` refuses batches whose returned masks and logits would exceed this (4 GiB)."""

Tensors = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def output_bytes(n: int, k: int, size: tuple[int, int], low: tuple[int, int], logits: bool) -> int:
    """Bytes of ``predict_batch``'s outputs: masks (n, k, H, W) bool or float32, scores, low-res logits."""
    return n * k * (size[0] * size[1] * (4 if logits else 1) + 4 + low[0] * low[1] * 4)


def check_output_size(n: int, k: int, size: tuple[int, int], low: tuple[int, int], logits: bool,
                      limit: int | None = None) -> None:
    """``TooMuchWorkError`` when ``n`` objects' outputs exceed ``limit`` (default ``MAX_BATCH_OUTPUT_BYTES``)."""
    limit = MAX_BATCH_OUTPUT_BYTES if limit is None else limit
    need = output_bytes(n, k, size, low, logits)
    if need > limit:
        raise TooMuchWorkError(
            f"predict_batch was given {n} objects: their {n * k} masks of {size[0]}x{size[1]} px would take "
            f"{need / 2**30:.1f} GiB (limit {limit / 2**30:.1f} GiB, MAX_BATCH_OUTPUT_BYTES). Use "
            f"iter_predict_batch(...) to receive them {DECODE_CHUNK} at a time, or pass fewer objects per call",
            count=n, estimate=float(need),
        )


def fit_chunk(chunk_size: int | None, bytes_per_object: int) -> int:
    """Objects per chunk: ``chunk_size`` (default ``DECODE_CHUNK``), fewer when their outputs of
    ``bytes_per_object`` each would exceed ``CHUNK_BYTES``; at least 1."""
    size = DECODE_CHUNK if chunk_size is None else int(chunk_size)
    if size < 1:
        raise SamUserError(f"chunk_size must be at least 1 (objects per decoder call), got {chunk_size}")
    return max(1, min(size, CHUNK_BYTES // max(1, bytes_per_object)))


def _rows(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if t is None else t[sl]


def iter_chunks(decode: Callable[..., tuple], prompts: Tensors, n: int, multimask: bool, return_logits: bool,
                chunk_size: int | None = None, progress: Progress = None,
                cancel: Cancel = None) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(start, masks, scores, low_res)`` numpy arrays for objects ``start:start + len(masks)``.

    ``decode(coords, labels, boxes, masks, multimask, return_logits)`` is ``predict_torch``;
    ``progress(done, total)`` in objects after each chunk; ``cancel`` raises ``Cancelled`` between chunks.
    """
    size = DECODE_CHUNK if chunk_size is None else int(chunk_size)
    if size < 1:
        raise SamUserError(f"chunk_size must be at least 1 (objects per decoder call), got {chunk_size}")
    for start in range(0, n, size):
        check_cancel(cancel)
        sl = slice(start, min(n, start + size))
        m, s, lo = decode(*(_rows(t, sl) for t in prompts), multimask, return_logits)
        yield start, m.cpu().numpy(), s.float().cpu().numpy(), lo.float().cpu().numpy()
        if progress is not None:
            progress(sl.stop, n)


def decode_chunked(decode: Callable[..., tuple], prompts: Tensors, n: int, multimask: bool, return_logits: bool,
                   size: tuple[int, int], low: tuple[int, int], chunk_size: int | None = None,
                   progress: Progress = None, cancel: Cancel = None) -> tuple[Any, Any, Any]:
    """All of :func:`iter_chunks` in preallocated arrays (after :func:`check_output_size`)."""
    k = 3 if multimask else 1
    check_output_size(n, k, size, low, return_logits)
    masks = np.empty((n, k, *size), np.float32 if return_logits else np.bool_)
    scores = np.empty((n, k), np.float32)
    low_res = np.empty((n, k, *low), np.float32)
    for start, m, s, lo in iter_chunks(decode, prompts, n, multimask, return_logits, chunk_size, progress, cancel):
        stop = start + len(m)
        masks[start:stop], scores[start:stop], low_res[start:stop] = m, s, lo
    return masks, scores, low_res
