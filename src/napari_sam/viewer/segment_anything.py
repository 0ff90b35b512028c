"""``SegmentAnything``: SAM in a napari viewer, for the console, scripts and the dock widget.

    sam = napari_sam.SegmentAnything(viewer)
    sam.set_model("nano_nuclei")            # registry name, checkpoint path or a Sam
    sam.set_image_layer(viewer.layers["nuclei"])
    mask = sam.segment(points=[[120, 80]], commit=True)   # napari (row, col) data coordinates
    sam.labels_layer.undo()

Prompts live in two layers it creates, "SAM points" (feature ``label``: positive/negative) and
"SAM boxes" (rectangles); every change re-runs the decoder into the "SAM preview" layer, and
:meth:`commit` writes the preview into the output Labels layer as new object ids.
Coordinates: napari (..., row, col) -> SAM (x, y) only in :mod:`napari_sam.viewer.slicing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.events import EmitterGroup
from napari.utils.notifications import show_error, show_warning

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import TiledPredictor
from napari_sam.errors import SamUserError
from napari_sam.viewer import prompts as _prompts
from napari_sam.viewer.embeddings import EmbeddingsMixin
from napari_sam.viewer.everything import EverythingMixin
from napari_sam.viewer.slicing import (
    EmbeddingCache,
    box_arg_to_corners,
    box_rc_to_xy,
    rc_to_xy,
    spatial_shape,
)
from napari_sam.viewer.volume import VolumeMixin
from napari_sam.weights.loading import load_model

__all__ = ["SegmentAnything", "SamUserError"]


class SegmentAnything(VolumeMixin, EverythingMixin, EmbeddingsMixin, _prompts.PromptLayers):
    """Segment Anything bound to a napari viewer (the object behind the dock widget).

    Events (``sam.events``): ``model``, ``image_layer``, ``labels_layer``, ``preview`` (decoder ran),
    ``embedding`` (an embedding arrived), ``committed`` (value: list of new ids).
    Stacks and automatic masks: :meth:`segment_volume`, :meth:`extend_labels`,
    :meth:`precompute_embeddings`, :meth:`segment_everything` (see docs/volume.md, docs/automatic.md).
    """

    def __init__(self, viewer: Any, cache_size: int = 8) -> None:
        self.viewer = viewer
        self.events = EmitterGroup(
            source=self, model=None, image_layer=None, labels_layer=None, preview=None,
            embedding=None, committed=None,
        )
        self.model: Any = None
        self.model_name: str | None = None
        self.predictor: Any = None
        self.device: str | None = None
        self.image_layer: Image | None = None
        self._labels_layer: Labels | None = None
        self.overwrite = False
        self._tiled = False  # images larger than the model's input: tiles at their own resolution
        self.multimask = True  # preview: SAM's three candidates for a single object, cycle with N
        self.channel_axis: int | None = None  # leading axis whose first 3 channels form an RGB composite
        self.cache = EmbeddingCache(cache_size)
        self._model_version = 0
        self._predictor_key: Any = None
        # embedding requests: None -> compute synchronously; the widget sets a background runner
        self.request_embedding: Any = None
        # current preview: masks per object (B, H, W), candidates/scores of a single object
        self.objects: np.ndarray | None = None
        self.candidates: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.candidate = 0
        self.preview_index: tuple[int, ...] | None = None
        # (index, points xy, labels, box xy, low-res logits) of the last single-object decode
        self._last_prompt: tuple | None = None
        _prompts.PromptLayers.__init__(self)
        self._init_volume()
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ model
    @staticmethod
    def load(name_or_path: str | Path | None = None, device: str | None = None, progress: Any = None) -> Any:
        """Load a registry model or checkpoint file (may download; safe to run in a thread)."""
        return load_model(name_or_path, device=device, progress=progress)

    def set_model(self, model: Any, device: str | None = None) -> None:
        """Use ``model``: a registry name, a checkpoint path, or a ``Sam`` instance (loaded synchronously)."""
        if isinstance(model, str | Path):
            name = str(model)
            model = self.load(model, device=device or self.device)
        else:
            name = getattr(model, "model_name", None) or getattr(model, "arch", "custom model")
        self.predictor = self._wrap(SamPredictor(model, device=device or self.device))
        self.model, self.model_name = model, name
        self.device = str(self.predictor.device)
        self._model_version += 1
        self._predictor_key = None
        self.cache.clear()
        self._clear_preview()
        self.events.model(value=model)

    @property
    def tiled(self) -> bool:
        """Whether images larger than the model's input are segmented at their own resolution, in
        overlapping tiles (``napari_sam.engine.tiling``): clicks and boxes. Automatic masks and propagation
        through stacks keep whole-slice embeddings (docs/tiling.md says why)."""
        return self._tiled

    @tiled.setter
    def tiled(self, on: bool) -> None:
        if bool(on) == self._tiled:
            return
        self._tiled = bool(on)
        if self.predictor is not None:  # the same model (stack stores stay valid), other embeddings
            self.predictor = self._wrap(getattr(self.predictor, "predictor", self.predictor))
            self._predictor_key = None
            self.cache.clear()
            self._clear_preview()

    def _wrap(self, predictor: Any) -> Any:
        if not self._tiled:
            return predictor
        return TiledPredictor(predictor)

    # ------------------------------------------------------------------ image / labels layers
    def set_image_layer(self, layer: Image | None) -> None:
        """Segment ``layer`` (an Image layer, 2D-nD, RGB(A), any dtype); clears the prompts."""
        if layer is not None and not isinstance(layer, Image):
            raise SamUserError(f"{getattr(layer, 'name', layer)!r} is not an Image layer")
        if layer is self.image_layer:
            return
        self.image_layer = layer
        self.channel_axis = None
        self._clear_preview()
        if layer is not None:
            self.ensure_prompt_layers()
        self.events.image_layer(value=layer)

    @property
    def labels_layer(self) -> Labels | None:
        """The output Labels layer; created ("SAM labels", image-shaped int32) on first use."""
        if self._labels_layer is None and self.image_layer is not None:
            img = self.image_layer
            self._labels_layer = self.viewer.add_labels(
                np.zeros(spatial_shape(img), dtype=np.int32), name="SAM labels",
                scale=img.scale, translate=img.translate,
            )
            self.raise_prompt_layers()
            self.events.labels_layer(value=self._labels_layer)
        return self._labels_layer

    @labels_layer.setter
    def labels_layer(self, layer: Labels | None) -> None:
        if layer is not None and not isinstance(layer, Labels):
            raise SamUserError(f"{getattr(layer, 'name', layer)!r} is not a Labels layer")
        self._labels_layer = layer
        self.events.labels_layer(value=layer)

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
        predictor = self._require_model()
        pts = None if points_rc is None or len(points_rc) == 0 else rc_to_xy(points_rc)
        lab = None if pts is None else np.asarray(labels, dtype=np.float32).reshape(-1)
        boxes = [box_rc_to_xy(b) for b in boxes_rc]
        if pts is None and not boxes:
            self._clear_preview()
            return np.zeros((0,) + spatial_shape(self._require_image())[-2:], dtype=bool)
        if not self._use_embedding(index, sync):
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
            coords, plabels = _prompts.assign_points_to_boxes(pts, lab, np.stack(boxes))
            masks, scores, _ = predictor.predict_batch(coords, plabels, np.stack(boxes), multimask_output=False)
            self.candidates, self.scores, self.candidate = None, scores[:, 0], 0
            self._last_prompt = None
            objects = masks[:, 0]
        self._show(index, objects)
        return objects

    def _refinable(
        self, index: tuple[int, ...], pts: np.ndarray | None, lab: np.ndarray | None, box: np.ndarray | None
    ) -> np.ndarray | None:
        """The shown candidate's low-res logits (1, 256, 256; image-wide with tiles) when ``pts``/``lab``/``box`` (SAM x, y)
        add points to the last single-object prompts of slice ``index``; else None."""
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
        multimask: bool = False, commit: bool = False, index: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """Segment from prompts given in napari data coordinates of the image layer.

        Args:
            points: (N, ndim) or (N, 2) (.., row, col); with ndim columns the leading ones pick the
                slice, with 2 the slice on screen (or ``index``) is used.
            labels: (N,) 1 positive / 0 negative (default all positive).
            box: (row0, col0, row1, col1), napari rectangle corners (4, ndim|2), or several of either
                (one object each, one batched decoder call).
            multimask: let SAM choose the best of its three candidates (cycle with :meth:`cycle_mask`).
            commit: also write the result into :attr:`labels_layer`.

        Returns:
            (H, W) bool mask of the slice, or (B, H, W) for several boxes. The preview layer shows it.
        """
        img = self._require_image()
        self._require_model()
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
        index = _prompts.index_from_coords(arrays, nlead, index, self.current_index)
        points_rc = arrays[0][:, -2:] if points is not None else None
        objects = self.decode(index, points_rc, labels, [c[:, -2:] for c in corners], multimask, sync=True)
        if commit:
            self.commit(clear_prompts=False)
        return objects[0] if len(corners) <= 1 else objects

    def cycle_mask(self, step: int = 1) -> tuple[int, float] | None:
        """Show the next of SAM's candidate masks for the current object; returns (candidate, IoU score)."""
        if self.candidates is None or len(self.candidates) < 2 or self.preview_index is None:
            return None
        self.candidate = (self.candidate + step) % len(self.candidates)
        self._show(self.preview_index, self.candidates[self.candidate][None])
        return self.candidate, float(self.scores[self.candidate])

    # ------------------------------------------------------------------ commit
    def commit(self, clear_prompts: bool = True) -> list[int]:
        """Write the previewed object(s) into the Labels layer, one new id and one undo step each.

        Pixels of existing objects are kept unless ``overwrite`` is set. Returns the new ids.
        """
        if self.objects is None or self.preview_index is None or not self.objects.any():
            raise SamUserError("nothing to commit: add a point or a box first")
        img = self._require_image()
        labels = self.labels_layer
        if tuple(labels.data.shape) != spatial_shape(img):
            raise SamUserError(
                f"labels layer {labels.name!r} has shape {tuple(labels.data.shape)}, the image "
                f"{img.name!r} needs {spatial_shape(img)}"
            )
        index = self.preview_index
        current = np.asarray(labels.data[index])
        next_id = int(np.max(labels.data)) + 1 if np.size(labels.data) else 1
        ids = []
        for mask in self.objects:
            target = mask if self.overwrite else mask & (current == 0)
            rows, cols = np.nonzero(target)
            if rows.size == 0:
                continue
            coords = tuple(np.full(rows.size, i, dtype=np.intp) for i in index) + (rows, cols)
            with labels.block_history():
                labels.data_setitem(coords, next_id)
            current[rows, cols] = next_id
            ids.append(next_id)
            next_id += 1
        if clear_prompts:
            self.clear_prompts()
        self._clear_preview()
        self.events.committed(value=ids)
        return ids

    # ------------------------------------------------------------------ preview and events
    def _show(self, index: tuple[int, ...], objects: np.ndarray) -> None:
        self.objects, self.preview_index = objects, index
        # the smallest dtype that holds the ids: napari draws 8/16-bit labels without hashing them
        dtype = np.uint8 if len(objects) < 2**8 else np.uint16 if len(objects) < 2**16 else np.int32
        ids = np.zeros(objects.shape[1:], dtype=dtype)
        for k, m in enumerate(objects):
            ids[m] = k + 1
        self.set_preview(ids)
        self.events.preview(value=objects)

    def _clear_preview(self) -> None:
        self.objects = self.candidates = self.scores = None
        self._last_prompt = None
        self.preview_index = None
        self.set_preview(None)

    def update_preview(self, sync: bool = False) -> np.ndarray | None:
        """Re-run the decoder from the prompt layers for the slice on screen (errors are notified)."""
        try:
            if self.image_layer is None or self.predictor is None:
                return None
            index = self.current_index()
            points_rc, labels, boxes = self.read_prompts(index)
            return self.decode(index, points_rc, labels, boxes, self.multimask, sync=sync, refine=True)
        except SamUserError as exc:
            show_error(str(exc))
        except Exception as exc:  # a decoder failure must not break the event loop
            show_error(f"SAM: {type(exc).__name__}: {exc}")
        return None

    def _on_slice_changed(self, event: Any = None) -> None:
        if self.image_layer is None or self.predictor is None:
            return
        try:
            index = self.current_index()
        except SamUserError:
            return
        if self.request_embedding is not None:
            self.request_embedding(index)  # prefetch the slice now on screen (background)
        if index != self.preview_index:
            self._clear_preview()
            self.update_preview()

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if layer is self.image_layer:
            self.set_image_layer(None)
        if layer is self._labels_layer:
            self.labels_layer = None
        self.forget_layer(layer)

    def notify(self, exc: BaseException) -> None:
        """Show an exception as a napari notification (errors) or warning (user mistakes)."""
        (show_warning if isinstance(exc, Warning) else show_error)(str(exc))
