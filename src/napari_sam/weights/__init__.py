"""Weights: the checkpoint registry (name, architecture, URL, hash, licence), download and cache, strict loading.

``registry`` is data only; ``download`` fetches and caches files (pooch, no torch); ``loading`` reads
checkpoints safely and builds models. May import ``engine``, ``models`` and ``errors``; never napari or Qt.
The names of the former ``napari_sam.weights`` module are re-exported here lazily, so importing this
package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_MODEL": "napari_sam.weights.registry",
    "REGISTRY": "napari_sam.weights.registry",
    "ModelInfo": "napari_sam.weights.registry",
    "get_model_info": "napari_sam.weights.registry",
    "list_models": "napari_sam.weights.registry",
    "CACHE_ENV": "napari_sam.weights.download",
    "cache_dir": "napari_sam.weights.download",
    "fetch": "napari_sam.weights.download",
    "is_cached": "napari_sam.weights.download",
    "model_path": "napari_sam.weights.download",
    "load_model": "napari_sam.weights.loading",
    "load_state_dict": "napari_sam.weights.loading",
    "CheckpointError": "napari_sam.errors",
    "ChecksumError": "napari_sam.errors",
    "ModelDownloadError": "napari_sam.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
