"""Segment everything in ``SegmentAnything``: automatic masks of the slice (or stack) into the Labels layer.

Same job/apply split as :mod:`napari_sam.viewer.volume`: ``everything_job`` returns a thread-safe
``job(progress, cancel)`` (reads the image, runs ``AutomaticMaskGenerator`` on the background
predictor) and ``apply(labels)`` (GUI thread: new ids above the existing ones, one undo step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.engine.images import to_sam_image
from napari_sam.errors import Cancelled, SamUserError
from napari_sam.viewer.slicing import slice_image, spatial_shape
from napari_sam.viewer.stack import StackSlices, next_label, stack_of, write_slices
from napari_sam.weights.registry import automatic_defaults, automatic_params


class EverythingMixin:
    """Automatic masks for ``SegmentAnything`` (needs ``EmbeddingsMixin`` and ``background_predictor``)."""

    def automatic_defaults(self) -> dict[str, float]:
        """``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh`` used when not given:
        the current model's (registry; SAM's 0.88/0.95/0.7 for files)."""
        return automatic_defaults(getattr(self, "model_name", None))

    def everything_job(
        self, points_per_side: int = 32, pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        min_mask_region_area: int = 0, stack: bool = False, index: tuple[int, ...] | None = None, **amg: Any,
    ) -> tuple[Callable[..., np.ndarray | None], Callable[[np.ndarray | None], list[int]]]:
        """(job(progress, cancel) -> (k, H, W) labels or None if cancelled, apply(labels) -> new ids).

        Thresholds left None (and ``box_nms_thresh`` when not in ``amg``) are the model's
        :meth:`automatic_defaults`."""
        img = self._require_image()
        self._require_model()
        index = self.current_index() if index is None else tuple(index)
        limits, chan = self._image_settings()
        labels = self.labels_layer
        if tuple(labels.data.shape) != spatial_shape(img):
            raise SamUserError(f"labels layer {labels.name!r} does not have the image's shape {spatial_shape(img)}")
        thresholds = automatic_params(
            getattr(self, "model_name", None), pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, box_nms_thresh=amg.pop("box_nms_thresh", None),
        )
        gen = AutomaticMaskGenerator(
            self.background_predictor(), points_per_side=points_per_side,
            min_mask_region_area=min_mask_region_area, **thresholds, **amg,
        )
        if stack:
            st = stack_of(img, index, chan)
            vol = StackSlices(img, st, limits, chan)
            leads = [st.index(z) for z in range(st.n)]

            def run(progress: Any, cancel: Any) -> np.ndarray:
                return gen.generate_labels_stack(vol, axis=0, rgb=True, progress=progress, cancel=cancel)
        else:
            leads = [index]

            def run(progress: Any, cancel: Any) -> np.ndarray:
                arr, rgb = slice_image(img, index, chan)
                image = to_sam_image(arr, contrast_limits=limits, rgb=rgb)
                return gen.generate_labels(image, progress=progress, cancel=cancel)[None]

        def job(progress: Any = None, cancel: Any = None) -> np.ndarray | None:
            try:
                return run(progress, cancel)
            except Cancelled:
                return None

        def apply(result: np.ndarray | None) -> list[int]:
            if result is None:
                return []
            offset = next_label(labels) - 1
            slices = {
                lead: (np.where(r > 0, r.astype(labels.data.dtype) + offset, 0), [])
                for lead, r in zip(leads, result, strict=True) if r.any()
            }
            ids = write_slices(labels, slices, self.overwrite)
            self.events.committed(value=ids)
            return ids

        return job, apply

    def segment_everything(
        self, points_per_side: int = 32, pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        min_mask_region_area: int = 0, progress: Any = None, cancel: Any = None, stack: bool = False,
        index: tuple[int, ...] | None = None, **amg: Any,
    ) -> list[int]:
        """Automatic instance labels of the slice on screen (or its whole stack with ``stack=True``,
        ids linked across slices) into :attr:`labels_layer`, one undo step.

        New ids start above the layer's largest id; pixels of existing objects are kept unless
        ``overwrite``. Parameters as ``AutomaticMaskGenerator`` (``amg`` passes the others, e.g.
        ``crop_n_layers``, ``points_per_batch``, ``tile_size``: :attr:`tiled` is not applied here, see
        docs/tiling.md), except that thresholds left None are the model's
        :meth:`automatic_defaults` (the registry entry's for the built-in models, SAM's
        0.88/0.95/0.7 otherwise). ``cancel`` (callable or Event): nothing is written
        and ``[]`` returned. Returns the ids written.
        """
        job, apply = self.everything_job(
            points_per_side, pred_iou_thresh, stability_score_thresh, min_mask_region_area, stack, index, **amg
        )
        return apply(job(progress, cancel))
