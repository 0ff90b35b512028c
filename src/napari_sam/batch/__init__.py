"""Batch segmentation of many images, stacks and volumes, in one process or on dask.distributed.

``segment_batch(inputs, output, mode=..., model=..., workers=...)`` (:mod:`napari_sam.batch.run`) is what
``napari-sam batch`` calls; the parts: ``inputs`` (discovery and reading), ``prompts`` (prompt files),
``tasks`` (one unit of work, the per-process model cache), ``writing`` (atomic outputs, summary.csv),
``volume`` (seeds through volumes) and ``cluster`` (dask; imported only when a cluster is used).
Nothing is imported here until used: ``import napari_sam.batch`` imports neither dask nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BatchReport", "segment_batch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("napari_sam.batch.run"), name)
    raise AttributeError(f"module 'napari_sam.batch' has no attribute {name!r}")
