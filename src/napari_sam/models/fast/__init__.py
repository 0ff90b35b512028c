"""The CPU fast path of SAM's mask decoder.

It reads the weights of the plain, reference-shaped modules (:mod:`napari_sam.models.mask_decoder`,
:mod:`napari_sam.models.transformer`) and computes the same numbers with fewer multiply-adds and
fewer passes over memory: what pays on a CPU, where a click is bound by memory traffic. On a GPU
the plain modules are faster (a few large kernels instead of many small ones), and training uses
them too. This package depends on ``models/`` one way; nothing there imports it.

Which path runs is chosen in one place, :func:`resolve_decoder_path` (``SamPredictor(model,
decoder="auto" | "plain" | "fast")``); the table in ``docs/engine.md`` says what runs when.
"""

from __future__ import annotations

import torch

from ..mask_decoder import MaskDecoder
from .mask_decoder import FastMaskDecoder, PreparedDecoder, fast_decoder, mask_update

__all__ = ["DECODER_PATHS", "FastMaskDecoder", "PreparedDecoder", "fast_decoder", "mask_update", "resolve_decoder_path"]

#: the values of ``SamPredictor(decoder=...)``
DECODER_PATHS = ("auto", "plain", "fast")


def resolve_decoder_path(decoder: str, device: torch.device, module: torch.nn.Module | None = None) -> str:
    """``"plain"`` or ``"fast"`` for a requested ``decoder`` on ``device``: ``"auto"`` is the fast
    path on a CPU and the plain modules elsewhere (GPU, MPS). The fast path needs SAM's
    :class:`MaskDecoder` (``module``, when given): any other decoder module runs plain."""
    if decoder not in DECODER_PATHS:
        raise ValueError(f"decoder must be one of {DECODER_PATHS}, got {decoder!r}")
    sam_decoder = module is None or type(module) is MaskDecoder  # (not SAM 2's, whatever it derives from)
    if decoder == "fast" and not sam_decoder:
        raise ValueError(f"decoder='fast' needs SAM's MaskDecoder, not {type(module).__name__}: use 'plain'")
    if decoder == "auto":
        return "fast" if torch.device(device).type == "cpu" and sam_decoder else "plain"
    return decoder
