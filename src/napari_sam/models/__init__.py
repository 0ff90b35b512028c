"""The networks, pure torch: one nn.Module per file.

Importing this package registers every architecture with :func:`napari_sam.models.sam.build_model`,
including the project's own small model (``models/nano.py``).
"""

from __future__ import annotations

import importlib
import importlib.util

for _name in ("sam", "nano"):  # nano.py registers the "nano" architecture with sam.register_arch
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
