"""The networks, pure torch: one nn.Module per file.

Importing this package registers every architecture with :func:`build_model`, including the
project's own small model (``models/nano.py`` registers ``"nano"`` and ``"nano_l"``), LiteMedSAM
(``models/lite_medsam.py`` registers ``"lite_medsam"``) and SAM 2.1 (``models/sam2/sam2.py`` registers
``"sam2.1_hiera_tiny"``, ``_small``, ``_base_plus``, ``_large``; the Hiera and memory modules are
imported only when one is built).
"""

from __future__ import annotations

from . import lite_medsam, nano  # noqa: F401  (register "lite_medsam" and the "nano" architectures)
from .sam import Preprocessing, Sam, available_archs, build_model, build_sam, infer_arch, register_arch
from .sam2 import sam2 as _sam2  # noqa: F401  (register the SAM 2.1 architectures)

__all__ = ["Preprocessing", "Sam", "available_archs", "build_model", "build_sam", "infer_arch", "register_arch"]
