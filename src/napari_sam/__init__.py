"""napari-sam: Segment Anything in napari, on a pure PyTorch engine.

The public API is re-exported here lazily, so ``import napari_sam`` is cheap and
never imports napari or Qt: the engine (models, predictor, volume loop, automatic
masks) runs in a plain Python process or on a GPU machine without napari.

Coordinates: napari data is (..., row, col); SAM prompts are (x, y) points and
(x0, y0, x1, y1) boxes in pixels of the original image.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
# the name pip knows this package by (napari-sam on PyPI is another plugin: README, "Installing")
DISTRIBUTION = "napari-sam-engine"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "build_model": "napari_sam.models.sam",
    "Sam": "napari_sam.models.sam",
    "load_model": "napari_sam.weights.loading",
    "list_models": "napari_sam.weights.registry",
    "REGISTRY": "napari_sam.weights.registry",
    "SamPredictor": "napari_sam.engine.predictor",
    "ImageEmbedding": "napari_sam.engine.predictor",
    "TiledPredictor": "napari_sam.engine.tiling",
    "TiledEmbedding": "napari_sam.engine.tiling",
    "to_sam_image": "napari_sam.engine.images",
    "pick_device": "napari_sam.engine.device",
    "EmbeddingStore": "napari_sam.volume.store",
    "segment_volume": "napari_sam.volume.propagate",
    "AutomaticMaskGenerator": "napari_sam.automatic.generator",
    "SegmentAnything": "napari_sam.viewer.segment_anything",
    "segment_batch": "napari_sam.batch.run",
}

__all__ = ["DISTRIBUTION", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
