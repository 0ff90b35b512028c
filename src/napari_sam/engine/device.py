"""Device selection: cuda, then mps, then cpu."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from napari_sam.errors import SamUserError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a ``torch.device``; when None pick cuda > mps > cpu."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise SamUserError(
                f"device {device!r} is not a device: use 'cpu', 'cuda' (or 'cuda:0', 'cuda:1', ...), 'mps', "
                f"or None to pick the best available (cuda > mps > cpu)"
            ) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available here")
        if dev.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise RuntimeError(f"device {device!r} was asked for, but MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """dtype for autocast: bf16 on CUDA when ``precision='auto'``, else None (fp32).

    ``precision`` is one of ``'auto'``, ``'fp32'``, ``'bf16'``, ``'fp16'``.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', not {precision!r}")
    return torch.bfloat16 if device.type == "cuda" else None


def encoder_context(device: torch.device, dtype: torch.dtype | None, batch: int) -> contextlib.ExitStack:
    """What an image encoder runs under for a batch of ``batch`` images on ``device``: autocast to
    ``dtype`` (None: none), and on CUDA for a single image no cuDNN attention, whose first call in a
    process builds its kernels for ~1 s (H200, bf16: first encode 1.5 s against 0.54 s, the same
    17 ms later); batches keep it (25 % faster per image at batch 8). docs/engine.md, "On a GPU"."""
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    if device.type == "cuda" and batch == 1:
        stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]))
    return stack
