"""The networks, pure torch: one nn.Module per file.

Importing this package registers every architecture with :func:`build_model`, including the
project's own small model (``models/nano.py`` registers ``"nano"`` and ``"nano_l"``) and LiteMedSAM
(``models/lite_medsam.py`` registers ``"lite_medsam"``).
"""

from __future__ import annotations

from . import lite_medsam, nano  # noqa: F401  (register "lite_medsam" and the "nano" architectures)
from .sam import Preprocessing, Sam, available_archs, build_model, build_sam, infer_arch, register_arch

__all__ = ["Preprocessing", "Sam", "available_archs", "build_model", "build_sam", "infer_arch", "register_arch"]
