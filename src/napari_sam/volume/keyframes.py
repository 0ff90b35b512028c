"""SAM 2 in ``segment_volume``: keyframes ({object: {slice: Prompt}}) carried through the stack of an
``EmbeddingStore`` by :class:`~napari_sam.volume.tracker.VolumeTracker`, with the store's features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from napari_sam.engine.progress import Cancel, Progress
from napari_sam.volume.frames import store_features
from napari_sam.volume.result import Prompt, VolumeResult
from napari_sam.volume.tracker import VolumeTracker

__all__ = ["is_sam2", "track_keyframes"]


def is_sam2(model: Any) -> bool:
    """Whether ``model`` has SAM 2's memory (so :class:`VolumeTracker` can carry its objects)."""
    return all(hasattr(model, a) for a in ("forward_image", "sam_mask_decoder", "memory_encoder"))


def track_keyframes(
    store: Any, keyframes: Mapping[int, Mapping[int, Prompt]], progress: Progress = None, cancel: Cancel = None
) -> VolumeResult:
    """``segment_volume`` with a SAM 2 model: the objects of ``keyframes`` ({id: {slice: Prompt}})
    through the stack of ``store`` (an ``EmbeddingStore``: its volume, axis, contrast limits and
    predictor's model), propagated both ways from the first prompted slice by SAM 2's memory. A
    keyframe's mask, when it has one, stands for its points and box. Image features come from the
    store (slices already encoded are not encoded again; new ones are kept there)."""
    tracker = VolumeTracker(
        store.predictor.model,
        store.volume,
        store.axis,
        features=store_features(store),
        contrast_limits=store.contrast_limits,
        rgb=store.rgb,
    )
    # a keyframe with a mask (the widget's preview: the candidate the user chose) is that mask; SAM 2
    # takes a slice's mask or its clicks, not both
    tracker.add_prompts({
        oid: {z: Prompt(mask=p.mask) if p.mask is not None else p for z, p in frames.items()}
        for oid, frames in keyframes.items()
    })
    return tracker.propagate("both", progress=progress, cancel=cancel)
