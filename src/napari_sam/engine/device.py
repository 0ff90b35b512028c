"""Device selection: cuda, then mps, then cpu."""

from __future__ import annotations

import torch

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
