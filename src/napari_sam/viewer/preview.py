"""The interactive preview of ``SegmentAnything``: prompts + a slice embedding -> the mask(s) shown.

``Preview`` runs the decoder on one slice and keeps what it showed: the object masks (``objects``),
SAM's candidates for a single object with their scores, the candidate shown, the slice
(``index``) and the last single-object prompts (for refinement). It draws into the preview layer
of ``PromptLayers``; the label writer turns ``objects`` into labels on commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.utils.notifications import show_error

from napari_sam.errors import SamUserError
from napari_sam.viewer.embeddings import SliceEmbeddings
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.prompts import PromptLayers, assign_points_to_boxes, index_from_coords
from napari_sam.viewer.slicing import box_arg_to_corners, box_rc_to_xy, rc_to_xy, spatial_shape


class Preview:
    """Decodes prompts on a slice and shows the result in the preview layer.

    Args:
        images, models, embeddings, prompts: the image, the model, the slice embeddings and the
            prompt layers (read by :meth:`update`, drawn into by :meth:`show`).
        on_shown: called with the (B, H, W) object masks each time they are shown.

    ``multimask``: :meth:`update` asks SAM for its three candidates of a single object (cycle with
    :meth:`cycle`).
    """

    def __init__(
        self, images: ImageSource, models: ModelSlot, embeddings: SliceEmbeddings, prompts: PromptLayers,
        on_shown: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.images = images
        self.models = models
        self.embeddings = embeddings
        self.prompts = prompts
        self.on_shown = on_shown
        self.multimask = True
        self.objects: np.ndarray | None = None  # (B, H, W) bool masks shown
        self.candidates: np.ndarray | None = None  # (C, H, W) of a single object
        self.scores: np.ndarray | None = None
        self.candidate = 0
        self.index: tuple[int, ...] | None = None
        # (index, points xy, labels, box xy, low-res logits) of the last single-object decode
        self._last_prompt: tuple | None = None

    # ------------------------------------------------------------------ decoding
    def decode(
        self, index: tuple[int, ...], points_rc: np.ndarray | None, labels: np.ndarray | None,
        boxes_rc: list[np.ndarray], multimask: bool, sync: bool = True, refine: bool = False,
    ) -> np.ndarray | None:
        """Run the decoder on slice ``index``; prompts in image data (row, col) of that slice.

        One box or none: one object (``multimask`` keeps SAM's three candidates). Several boxes:
        one object per box in a single ``predict_batch`` call; each point joins the first box that
        contains it. Returns the (B, H, W) bool object masks, or None while the embedding is computed.

        ``refine``: when the prompts extend the previous single-object prompts of this slice (the
        same box, the same points plus new ones), SAM's interactive protocol: the shown candidate's
        low-res logits go in as ``mask_input`` and one mask comes out (the widget's clicks).
        """
        predictor = self.models.require()
        index = self.images.check(index)
        pts = None if points_rc is None or len(points_rc) == 0 else rc_to_xy(points_rc)
        lab = None if pts is None else np.asarray(labels, dtype=np.float32).reshape(-1)
        boxes = [box_rc_to_xy(b) for b in boxes_rc]
        if pts is None and not boxes:
            self.clear()
            return np.zeros((0,) + spatial_shape(self.images.require())[-2:], dtype=bool)
        if not self.embeddings.use(index, sync):
            return None
        if len(boxes) <= 1:
            box = boxes[0] if boxes else None
            previous = self._refinable(index, pts, lab, box) if refine else None
            if previous is not None:
                masks, scores, low = predictor.predict(pts, lab, box, mask_input=previous, multimask_output=False)
            else:
                masks, scores, low = predictor.predict(pts, lab, box, multimask_output=multimask)
            self.candidates, self.scores = masks, scores
            self.candidate = int(np.argmax(scores))
            self._last_prompt = (index, pts, lab, box, low)
            objects = masks[self.candidate][None]
        else:
            coords, plabels = assign_points_to_boxes(pts, lab, np.stack(boxes))
            masks, scores, _ = predictor.predict_batch(coords, plabels, np.stack(boxes), multimask_output=False)
            self.candidates, self.scores, self.candidate = None, scores[:, 0], 0
            self._last_prompt = None
            objects = masks[:, 0]
        self.show(index, objects)
        return objects

    def _refinable(
        self, index: tuple[int, ...], pts: np.ndarray | None, lab: np.ndarray | None, box: np.ndarray | None
    ) -> np.ndarray | None:
        """The shown candidate's low-res logits (1, 256, 256; image-wide with tiles) when ``pts``/``lab``/``box``
        (SAM x, y) add points to the last single-object prompts of slice ``index``; else None."""
        last = self._last_prompt
        if last is None or self.candidates is None or last[0] != index or pts is None:
            return None
        _, old_pts, old_lab, old_box, low = last
        same_box = (box is None) == (old_box is None) and (box is None or np.array_equal(box, old_box))
        n = 0 if old_pts is None else len(old_pts)  # None: a box alone before (its points now refine it)
        kept = n == 0 or (np.array_equal(pts[:n], old_pts) and np.array_equal(lab[:n], old_lab))
        if not same_box or len(pts) <= n or not kept:
            return None
        return low[self.candidate][None]

    def segment(
        self, points: Any = None, labels: Any = None, box: Any = None,
        multimask: bool = False, index: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """Decode prompts given in napari data coordinates of the image layer (``SegmentAnything.segment``);
        returns (H, W) for one object, (B, H, W) for several boxes."""
        img = self.images.require()
        self.models.require()
        nlead = len(spatial_shape(img)) - 2
        arrays = []
        if points is not None:
            pts = np.asarray(points, dtype=float).reshape(len(points), -1)
            arrays.append(pts)
            labels = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(pts):
                raise SamUserError(f"{len(pts)} points but {len(labels)} labels")
        corners = box_arg_to_corners(box) if box is not None else []
        arrays += corners
        if not arrays:
            raise SamUserError("give points and/or a box")
        index = self.images.check(index_from_coords(arrays, nlead, index, self.images.current_index))
        points_rc = arrays[0][:, -2:] if points is not None else None
        objects = self.decode(index, points_rc, labels, [c[:, -2:] for c in corners], multimask, sync=True)
        return objects[0] if len(corners) <= 1 else objects

    def update(self, sync: bool = False) -> np.ndarray | None:
        """Re-run the decoder from the prompt layers for the slice on screen (errors are notified)."""
        try:
            if self.images.layer is None or self.models.predictor is None:
                return None
            index = self.images.current_index()
            points_rc, labels, boxes = self.prompts.read_prompts(index)
            return self.decode(index, points_rc, labels, boxes, self.multimask, sync=sync, refine=True)
        except SamUserError as exc:
            show_error(str(exc))
        except Exception as exc:  # a decoder failure must not break the event loop
            show_error(f"SAM: {type(exc).__name__}: {exc}")
        return None

    # ------------------------------------------------------------------ what is shown
    def cycle(self, step: int = 1) -> tuple[int, float] | None:
        """Show the next of SAM's candidate masks for the current object; returns (candidate, IoU score)."""
        if self.candidates is None or len(self.candidates) < 2 or self.index is None:
            return None
        self.candidate = (self.candidate + step) % len(self.candidates)
        self.show(self.index, self.candidates[self.candidate][None])
        return self.candidate, float(self.scores[self.candidate])

    def show(self, index: tuple[int, ...], objects: np.ndarray) -> None:
        """Show (B, H, W) object masks of slice ``index`` in the preview layer."""
        self.objects, self.index = objects, index
        # the smallest dtype that holds the ids: napari draws 8/16-bit labels without hashing them
        dtype = np.uint8 if len(objects) < 2**8 else np.uint16 if len(objects) < 2**16 else np.int32
        ids = np.zeros(objects.shape[1:], dtype=dtype)
        for k, m in enumerate(objects):
            ids[m] = k + 1
        self.prompts.set_preview(ids)
        if self.on_shown is not None:
            self.on_shown(objects)

    def clear(self) -> None:
        """Forget and hide the preview (the prompts stay)."""
        self.objects = self.candidates = self.scores = None
        self._last_prompt = None
        self.index = None
        self.prompts.set_preview(None)

    @property
    def has_objects(self) -> bool:
        """Whether an object with at least one pixel is shown."""
        return self.objects is not None and self.index is not None and bool(self.objects.any())
