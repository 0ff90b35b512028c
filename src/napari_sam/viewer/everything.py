"""Segment everything in ``SegmentAnything``: automatic masks of the slice (or stack) into the Labels layer.

Same job/apply split as :mod:`napari_sam.viewer.volume`: ``job`` returns a thread-safe
``job(progress, cancel)`` (reads the image, runs ``AutomaticMaskGenerator`` on the background
predictor) and ``apply(labels)`` (GUI thread: new ids above the existing ones, one undo step
through the ``LabelWriter``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.engine.images import to_sam_image
from napari_sam.errors import Cancelled
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.label_writer import LabelWriter
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.slicing import slice_image
from napari_sam.viewer.stack import StackSlices
from napari_sam.weights.registry import automatic_defaults, automatic_settings


class EverythingActions:
    """Automatic instance labels of ``images`` by ``models``' background predictor, written by ``writer``."""

    def __init__(self, images: ImageSource, models: ModelSlot, writer: LabelWriter) -> None:
        self.images = images
        self.models = models
        self.writer = writer

    def defaults(self) -> dict[str, float]:
        """``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh`` used when not given:
        the current model's (registry; SAM's 0.88/0.95/0.7 for files)."""
        return automatic_defaults(self.models.name)

    def job(
        self, points_per_side: int = 32, pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        min_mask_region_area: int = 0, stack: bool = False, index: tuple[int, ...] | None = None, **amg: Any,
    ) -> tuple[Callable[..., np.ndarray | None], Callable[[np.ndarray | None], list[int]]]:
        """(job(progress, cancel) -> (k, H, W) labels or None if cancelled, apply(labels) -> new ids).

        Thresholds left None (and ``box_nms_thresh`` when not in ``amg``) are the model's
        :meth:`defaults`, and so are its tiles when ``amg`` has no ``tile_size`` (``registry.automatic_settings``)."""
        img = self.images.require()
        self.models.require()
        index = self.images.index_or_current(index)
        limits, chan = self.images.settings()
        still_valid = self.writer.guard("segment everything")
        params = automatic_settings(
            self.models.name, {**amg, "pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh},
        )
        gen = AutomaticMaskGenerator(
            self.models.background_predictor(), points_per_side=points_per_side,
            min_mask_region_area=min_mask_region_area, **params,
        )
        if stack:
            st = self.images.stack(index)
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
            with self.models.exclusive("segment everything"):
                try:
                    return run(progress, cancel)
                except Cancelled:
                    return None

        def apply(result: np.ndarray | None) -> list[int]:
            still_valid()  # the image or labels layer removed mid-job: say so, write nothing
            if result is None:
                return []
            offset = self.writer.next_label() - 1
            slices = {  # int64 ids: the writer promotes a layer too narrow for them
                lead: (np.where(r > 0, r.astype(np.int64) + offset, 0), [])
                for lead, r in zip(leads, result, strict=True) if r.any()
            }
            return self.writer.write_slices(slices)

        return job, apply
