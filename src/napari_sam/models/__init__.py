"""The networks, pure torch: one nn.Module per file.

Importing this package registers every architecture with :func:`build_model`, including the
project's own small model (``models/nano.py`` registers ``"nano"`` and ``"nano_l"``).
"""

from __future__ import annotations

from . import nano  # noqa: E402,F401  (registers the "nano" architectures)
from .sam import Sam, available_archs, build_model, build_sam, infer_arch, register_arch

__all__ = ["Sam", "available_archs", "build_model", "build_sam", "infer_arch", "register_arch"]
