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

``SegmentAnything`` is a façade: the work is done by its parts, plain objects that get what they
need in their constructors (docs/architecture.md draws who calls whom):
``image_source`` (``ImageSource``), ``model_slot`` (``ModelSlot``), ``stores`` (``StackStores``),
``embeddings`` (``SliceEmbeddings``), ``prompts`` (``PromptLayers``), ``preview`` (``Preview``),
``writer`` (``LabelWriter``, the one place that writes labels), ``volume`` (``VolumeActions``) and
``everything`` (``EverythingActions``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.events import EmitterGroup
from napari.utils.notifications import show_error, show_warning

from napari_sam.engine.progress import AUTO
from napari_sam.errors import SamUserError
from napari_sam.viewer.console_progress import StopWhenClosed, console_progress
from napari_sam.viewer.embeddings import SliceEmbeddings
from napari_sam.viewer.everything import EverythingActions
from napari_sam.viewer.forwarding import Forward, Method
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.label_writer import LABELS_NAME, LabelWriter
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.preview import Preview
from napari_sam.viewer.prompts import PromptLayers
from napari_sam.viewer.slicing import check_multiscale, spatial_shape
from napari_sam.viewer.stores import StackStores
from napari_sam.viewer.volume import VolumeActions, renamed_seeds

__all__ = ["SegmentAnything", "SamUserError"]


class SegmentAnything:
    """Segment Anything bound to a napari viewer (the object behind the dock widget).

    Events (``sam.events``): ``model``, ``image_layer``, ``labels_layer``, ``preview`` (decoder ran),
    ``embedding`` (an embedding arrived), ``committed`` (value: list of ids written).
    Stacks and automatic masks: :meth:`segment_volume`, :meth:`extend_labels`,
    :meth:`precompute_embeddings`, :meth:`segment_everything` (see docs/volume.md, docs/automatic.md).
    """

    # the model
    model = Forward("model_slot", "model", "The ``Sam`` in use (None until :meth:`set_model`).")
    model_name = Forward("model_slot", "name", "Registry name, file path or arch of the model.")
    predictor = Forward("model_slot", "predictor", "The interactive predictor (``TiledPredictor`` with tiles).")
    device = Forward("model_slot", "device", "Device of the model ('cpu', 'cuda:0', ...).")
    max_tile_encodings = Forward("model_slot", "max_tile_encodings", "With tiles: most encoder runs per slice (None: any).")
    # the image and the output
    image_layer = Forward("image_source", "layer", "The Image layer segmented (set with :meth:`set_image_layer`).")
    channel_axis = Forward("image_source", "channel_axis", "Leading axis whose first 3 channels form an RGB composite.")
    overwrite = Forward("writer", "overwrite", "Write over the pixels of existing objects (default False).")
    # prompts and preview
    points_layer = Forward("prompts", "points_layer", "The 'SAM points' layer (feature ``label``).")
    boxes_layer = Forward("prompts", "boxes_layer", "The 'SAM boxes' layer (rectangles).")
    preview_layer = Forward("prompts", "preview_layer", "The 'SAM preview' Labels layer.")
    multimask = Forward("preview", "multimask", "Preview: SAM's three candidates for a single object (cycle with N).")
    objects = Forward("preview", "objects", "(B, H, W) bool masks of the preview, or None.")
    candidates = Forward("preview", "candidates", "(C, H, W) candidates of a single previewed object, or None.")
    scores = Forward("preview", "scores", "Predicted IoU of the candidates (or of each object), or None.")
    candidate = Forward("preview", "candidate", "Index of the candidate shown.")
    preview_index = Forward("preview", "index", "Leading-axis index of the previewed slice, or None.")
    # embeddings
    cache = Forward("embeddings", "cache", "The slice embeddings (``EmbeddingCache``, LRU).")
    request_embedding = Forward(
        "embeddings", "request", "None: embeddings are computed when needed; the widget sets a background runner."
    )
    store_budget = Forward("stores", "budget", "Bytes of float16 embeddings kept per stack (LRU).")
    cache_dir = Forward("stores", "cache_dir", "Optional zarr disk cache of the stacks' embeddings.")
    # 3D
    volume_params = Forward("volume", "params", "``segment_volume`` options used when not given.")
    last_volume = Forward("volume", "last", "The ``VolumeResult`` of the last 3D run.")

    # methods that are their part's (help() shows the part's signature and docstring)
    current_index = Method("image_source", "current_index")  # leading index of the slice on screen
    stack = Method("image_source", "stack")  # the Stack of a slice
    background_predictor = Method("model_slot", "background_predictor")  # for worker threads
    encode_job = Method("embeddings", "encode_job")  # (key, job) for a worker thread
    embedding_key = Method("embeddings", "key")  # the cache key of a slice
    has_embedding = Method("embeddings", "has")
    store_embedding = Method("embeddings", "store")
    embedding = Method("embeddings", "get")  # the ImageEmbedding of a slice, computed if needed
    stored_embedding = Method("stores", "stored_embedding")  # held by a stack store, else None
    volume_store = Method("stores", "store")  # the EmbeddingStore of a stack
    drop_stores = Method("stores", "clear")
    ensure_prompt_layers = Method("prompts", "ensure_prompt_layers")
    raise_prompt_layers = Method("prompts", "raise_prompt_layers")
    read_prompts = Method("prompts", "read_prompts")  # prompts of a slice in (row, col)
    add_point = Method("prompts", "add_point")
    clear_prompts = Method("prompts", "clear_prompts")
    set_preview = Method("prompts", "set_preview")
    forget_layer = Method("prompts", "forget_layer")
    decode = Method("preview", "decode")  # prompts in (row, col) of a slice -> masks shown
    update_preview = Method("preview", "update")  # decode the prompt layers (the widget's path)
    cycle_mask = Method("preview", "cycle")
    clear_preview = Method("preview", "clear")
    precompute_job = Method("volume", "precompute_job")
    volume_seeds = Method("volume", "seeds")
    automatic_defaults = Method("everything", "defaults")

    def __init__(self, viewer: Any, cache_size: int = 8) -> None:
        self.viewer = viewer
        self.events = EmitterGroup(
            source=self, model=None, image_layer=None, labels_layer=None, preview=None,
            embedding=None, committed=None,
        )
        self.image_source = ImageSource(viewer)
        self.model_slot = ModelSlot()
        self.stores = StackStores(self.image_source, self.model_slot)
        self.embeddings = SliceEmbeddings(
            self.image_source, self.model_slot, self.stores, cache_size,
            on_stored=lambda key: self.events.embedding(value=key),
            report=lambda what: console_progress(viewer, AUTO, what),  # tiles encoded for a console call
        )
        self.prompts = PromptLayers(viewer, self.image_source)
        self.preview = Preview(
            self.image_source, self.model_slot, self.embeddings, self.prompts,
            on_shown=lambda objects: self.events.preview(value=objects),
        )
        self.prompts.on_change = self.preview.update  # a prompt added, moved or removed
        self.writer = LabelWriter(
            viewer, self.image_source, on_layer=self._on_labels_layer,
            on_written=lambda ids: self.events.committed(value=ids),
        )
        self.volume = VolumeActions(
            self.image_source, self.model_slot, self.stores, self.prompts, self.preview, self.writer
        )
        self.everything = EverythingActions(self.image_source, self.model_slot, self.writer)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ model
    @staticmethod
    def load(name_or_path: str | Path | None = None, device: str | None = None, progress: Any = None) -> Any:
        """Load a registry model or checkpoint file (may download; safe to run in a thread)."""
        return ModelSlot.load(name_or_path, device=device, progress=progress)

    def set_model(self, model: Any, device: str | None = None) -> None:
        """Use ``model``: a registry name, a checkpoint path, or a ``Sam`` instance (loaded synchronously)."""
        model = self.model_slot.set(model, device=device)
        self.embeddings.clear()
        self.stores.clear()
        self.preview.clear()
        self.volume.use_model_rules()
        self.events.model(value=model)

    @property
    def tiled(self) -> bool:
        """Whether images larger than the model's input are segmented at their own resolution, in
        overlapping tiles (``napari_sam.engine.tiling``): clicks and boxes. Automatic masks and propagation
        through stacks keep whole-slice embeddings (docs/tiling.md says why). Default ("model"): on for
        models that embed at their own pixel scale (the nano models), off for SAM's (they shrink)."""
        return self.model_slot.tiled

    @tiled.setter
    def tiled(self, on: bool | str) -> None:
        if self.model_slot.set_tiled(on):  # the same model (stack stores stay valid), other embeddings
            self.embeddings.clear()
            self.preview.clear()

    @property
    def zoom(self) -> float | None:
        """How images (and stack slices) smaller than the model's input are embedded: None, enlarged
        to fill it (SAM's resize); a number, scaled by it (1: their own pixel scale) and zero-padded.
        Default: the model's (``Preprocessing.zoom``; docs/volume.md, "Scale")."""
        return self.model_slot.zoom

    @zoom.setter
    def zoom(self, zoom: float | None | str) -> None:
        if self.model_slot.set_zoom(zoom):  # other embeddings, stack stores included
            self.embeddings.clear()
            self.stores.clear()
            self.preview.clear()

    # ------------------------------------------------------------------ image / labels layers
    def set_image_layer(self, layer: Image | None) -> None:
        """Segment ``layer`` (an Image layer, 2D-nD, RGB(A), any dtype); clears the prompts.

        A multiscale layer is segmented on its highest-resolution level (``SamUserError`` when its
        slices exceed ``slicing.MAX_MULTISCALE_PIXELS``). When the output Labels layer no longer
        fits the new image (e.g. a 2D one for a 3D image), it is let go with a warning and a new
        image-shaped "SAM labels" layer is created on the first write."""
        if layer is not None and not isinstance(layer, Image):
            raise SamUserError(f"{getattr(layer, 'name', layer)!r} is not an Image layer")
        if layer is self.image_source.layer:
            return
        if layer is not None:
            check_multiscale(layer)
        self.image_source.layer = layer
        self.image_source.channel_axis = None
        self.preview.clear()
        if layer is not None:
            self.prompts.ensure_prompt_layers()
            self._fit_labels_layer(layer)
        self.events.image_layer(value=layer)

    def _fit_labels_layer(self, image: Image) -> None:
        labels = self.writer.existing
        if labels is None or tuple(labels.data.shape) == spatial_shape(image):
            return
        self.labels_layer = None  # a fitting "SAM labels" is created on the first write
        show_warning(
            f"SAM: the output labels layer {labels.name!r} {tuple(labels.data.shape)} does not fit the image "
            f"{image.name!r} {spatial_shape(image)}: it is left as it is, and SAM writes into a new "
            f"{LABELS_NAME!r} layer (set sam.labels_layer to choose another)"
        )

    @property
    def labels_layer(self) -> Labels | None:
        """The output Labels layer; created ("SAM labels", image-shaped int32) on first use."""
        return self.writer.layer

    @labels_layer.setter
    def labels_layer(self, layer: Labels | None) -> None:
        self.writer.layer = layer

    @property
    def existing_labels_layer(self) -> Labels | None:
        """The output Labels layer if one is set or was created; unlike :attr:`labels_layer` never creates one."""
        return self.writer.existing

    def _on_labels_layer(self, layer: Labels | None, created: bool) -> None:
        if created:
            self.prompts.raise_prompt_layers()
        self.events.labels_layer(value=layer)

    # ------------------------------------------------------------------ segment and commit
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
        objects = self.preview.segment(points, labels, box, multimask=multimask, index=index)
        if commit:
            self.commit(clear_prompts=False)
        return objects

    def commit(self, clear_prompts: bool = True) -> list[int]:
        """Write the previewed object(s) into the Labels layer, one new id and one undo step each.

        Pixels of existing objects are kept unless ``overwrite`` is set. Returns the new ids.
        """
        if not self.preview.has_objects:
            raise SamUserError("nothing to commit: add a point or a box first")
        ids = self.writer.write_objects(self.preview.index, self.preview.objects)
        if clear_prompts:
            self.prompts.clear_prompts()
        self.preview.clear()
        return ids

    # ------------------------------------------------------------------ stacks (see VolumeActions)
    def precompute_embeddings(
        self, progress: Any = AUTO, cancel: Any = None, index: tuple[int, ...] | None = None
    ) -> int:
        """Encode every slice of the current stack (``progress(done, total)``; ``cancel`` between slices)."""
        return self._run(self.volume.precompute_job(index), int, progress, cancel, "embeddings", writes=False)

    def volume_job(
        self, index: tuple[int, ...] | None = None, seeds_xy: dict | None = None,
        extend_labels: bool = False, ids: list[int] | None = None, **params: Any,
    ) -> tuple[Any, Any]:
        """(job(progress, cancel) -> VolumeResult, apply(result) -> ids written); see :meth:`segment_volume`."""
        seeds_xy = renamed_seeds(seeds_xy, params)
        return self.volume.job(index, seeds_xy, extend_labels=extend_labels, ids=ids, **params)

    def segment_volume(
        self, index: tuple[int, ...] | None = None, seeds_xy: dict | None = None,
        progress: Any = AUTO, cancel: Any = None, **params: Any,
    ) -> list[int]:
        """Carry the prompted object(s) through the stack and write them as new ids, one undo step.

        Args:
            index: a slice of the stack (default: on screen); prompts on any slice of it are seeds.
            seeds_xy: {object: {slice: Prompt or dict}} instead of the prompt layers, in SAM (x, y)
                pixels of the slice (unlike :meth:`segment`'s napari (row, col)); ``seeds=`` is its
                deprecated old name.
            progress, cancel: ``progress(done, total)``; ``cancel`` (callable or Event) between slices.
                Cancelled: the slices finished so far are written (whole slices only).
            params: ``napari_sam.segment_volume`` options over ``volume_params`` (e.g.
                ``iou_threshold=0``, ``max_distance=5``).

        Returns the new ids (existing objects kept unless ``overwrite``); ``last_volume`` holds the
        engine's ``VolumeResult`` (object k there = seed k).
        """
        job, apply = self.volume_job(index, renamed_seeds(seeds_xy, params), **params)
        return self._run(job, apply, progress, cancel, "3D segmentation")

    def extend_labels(
        self, ids: list[int] | None = None, index: tuple[int, ...] | None = None,
        progress: Any = AUTO, cancel: Any = None, **params: Any,
    ) -> list[int]:
        """Use the existing labels of the stack (all, or ``ids``) as mask seeds: gaps between labelled
        slices are filled and objects extended past their ends, keeping their ids (one undo step).
        ``keep_seed_masks=False`` re-predicts the labelled slices too (refinement)."""
        job, apply = self.volume.job(index, extend_labels=True, ids=ids, **params)
        return self._run(job, apply, progress, cancel, "extend labels in 3D")

    # ------------------------------------------------------------------ automatic (see EverythingActions)
    def everything_job(
        self, points_per_side: int = 32, pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        min_mask_region_area: int = 0, stack: bool = False, index: tuple[int, ...] | None = None, **amg: Any,
    ) -> tuple[Any, Any]:
        """(job(progress, cancel) -> (k, H, W) labels or None if cancelled, apply(labels) -> new ids)."""
        return self.everything.job(
            points_per_side, pred_iou_thresh, stability_score_thresh, min_mask_region_area, stack, index, **amg
        )

    def segment_everything(
        self, points_per_side: int = 32, pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        min_mask_region_area: int = 0, progress: Any = AUTO, cancel: Any = None, stack: bool = False,
        index: tuple[int, ...] | None = None, **amg: Any,
    ) -> list[int]:
        """Automatic instance labels of the slice on screen (or its whole stack with ``stack=True``,
        ids linked across slices) into :attr:`labels_layer`, one undo step.

        New ids start above the layer's largest id; pixels of existing objects are kept unless
        ``overwrite``. Parameters as ``AutomaticMaskGenerator`` (``amg`` passes the others, e.g.
        ``crop_n_layers``, ``points_per_batch``, ``tile_size``: :attr:`tiled` is not applied here, see
        docs/tiling.md), except that thresholds left None are the model's :meth:`automatic_defaults`.
        ``cancel`` (callable or Event): nothing is written and ``[]`` returned. Returns the ids written.
        """
        job, apply = self.everything.job(
            points_per_side, pred_iou_thresh, stability_score_thresh, min_mask_region_area, stack, index, **amg
        )
        return self._run(job, apply, progress, cancel, "segment everything")

    def _run(self, job: Any, apply: Any, progress: Any, cancel: Any, what: str, writes: bool = True) -> Any:
        """``apply(job(progress, cancel))`` on this thread; ``progress="auto"`` in a napari window is the
        activity dock's bar, the window live meanwhile (:mod:`napari_sam.viewer.console_progress`).
        The window closed meanwhile stops the job: nothing is written, ``[]`` and a warning."""
        stop = StopWhenClosed(self.viewer, cancel)
        with console_progress(self.viewer, progress, what) as report:
            result = job(report, stop)
        if writes and stop.window_closed:
            warnings.warn(f"SAM: the napari window was closed during {what!r}: it stopped, nothing was written",
                          RuntimeWarning, stacklevel=3)
            return []
        return apply(result)

    # ------------------------------------------------------------------ viewer events
    def _on_slice_changed(self, event: Any = None) -> None:
        if self.image_source.layer is None or self.model_slot.predictor is None:
            return
        try:
            index = self.image_source.current_index()
        except SamUserError:
            return
        if self.embeddings.request is not None:
            self.embeddings.request(index)  # prefetch the slice now on screen (background)
        if index != self.preview.index:
            self.preview.clear()
            self.preview.update()

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if layer is self.image_source.layer:
            self.set_image_layer(None)
        if layer is self.writer.existing:
            self.labels_layer = None
        self.prompts.forget_layer(layer)
        self.stores.forget_layer(layer)

    def notify(self, exc: BaseException) -> None:
        """Show an exception as a napari notification (errors) or warning (user mistakes)."""
        (show_warning if isinstance(exc, Warning) else show_error)(str(exc))
