"""Stacks and time series in ``SegmentAnything``: per-stack ``EmbeddingStore``, 3D propagation, precompute.

The stack axis is the image's last slider axis (z of (Z, Y, X), t of (T, Y, X), z of (T, Z, Y, X)
within the current t). Long work is split in two so the widget can run it in a worker thread:
``*_job(...)`` captures settings on the GUI thread and returns ``job(progress, cancel)`` (thread-safe,
no layer writes) and, for writes, ``apply(result)`` (GUI thread, one undo step). The console methods
call both in turn.

Background work uses its own ``SamPredictor`` on the same model (``background_predictor``), so a
click decoded on the GUI thread never races a propagation running in a worker.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamUserError
from napari_sam.viewer.prompts import assign_points_to_boxes
from napari_sam.viewer.slicing import box_rc_to_xy, in_slice, rc_to_xy, spatial_shape, to_image_data
from napari_sam.viewer.stack import Stack, StackSlices, next_label, stack_of, write_slices
from napari_sam.volume.propagate import Prompt, segment_volume
from napari_sam.volume.store import DEFAULT_BUDGET, EmbeddingStore

MAX_STORES = 2  # stacks (image layer x outer index x settings) whose embeddings are kept
# the widget's defaults are the engine's (chosen by measurement, see docs/volume.md)
VOLUME_DEFAULTS: dict[str, Any] = {
    name: inspect.signature(segment_volume).parameters[name].default
    for name in ("prompt", "iou_threshold", "stability_threshold", "overlap_threshold", "min_area", "max_distance")
}


class VolumeMixin:
    """3D actions of ``SegmentAnything`` (needs the attributes of ``EmbeddingsMixin`` and ``PromptLayers``)."""

    def _init_volume(self) -> None:
        self._stores: OrderedDict[tuple, Any] = OrderedDict()
        self._store_lock = threading.Lock()
        self._bg_predictor: tuple[int, Any] | None = None
        self.store_budget = DEFAULT_BUDGET  # bytes of float16 embeddings per stack (LRU)
        self.cache_dir: str | None = None  # optional zarr disk cache of the stacks' embeddings
        self.volume_params: dict[str, Any] = dict(VOLUME_DEFAULTS)  # segment_volume stop criteria etc.
        self.last_volume: Any = None  # the VolumeResult of the last 3D run
        self.events.model.connect(lambda e=None: self.drop_stores())
        self.viewer.layers.events.removed.connect(self._drop_layer_stores)

    # ------------------------------------------------------------------ stores
    def background_predictor(self) -> Any:
        """A ``SamPredictor`` on the current model for worker threads (shares the weights)."""
        predictor = self._require_model()
        if self._bg_predictor is None or self._bg_predictor[0] != self._model_version:
            bg = SamPredictor(self.model, device=predictor.device, precision=predictor.precision)
            self._bg_predictor = (self._model_version, bg)
        return self._bg_predictor[1]

    def stack(self, index: tuple[int, ...] | None = None) -> Stack:
        """The stack of slice ``index`` (default: on screen) of the image layer."""
        index = self.current_index() if index is None else tuple(index)
        return stack_of(self._require_image(), index, self._image_settings()[1])

    def _store_key(self, st: Stack) -> tuple:
        limits, chan = self._image_settings()
        outer = tuple(0 if i == chan else v for i, v in enumerate(st.outer))
        return (id(self.image_layer), outer, limits, chan, self._model_version)

    def volume_store(self, index: tuple[int, ...] | None = None) -> Any:
        """The ``EmbeddingStore`` of the stack holding slice ``index`` (created on first use).

        One store per (image layer, outer index, contrast limits, channel composite, model); the
        last ``MAX_STORES`` are kept. Budget ``store_budget``, disk cache ``cache_dir``.
        """
        st = self.stack(index)
        key = self._store_key(st)
        with self._store_lock:
            store = self._stores.get(key)
            if store is None:
                limits, chan = self._image_settings()
                vol = StackSlices(self._require_image(), st, limits, chan)
                store = EmbeddingStore(
                    self.background_predictor(), vol, axis=0, budget_bytes=self.store_budget,
                    cache_dir=self.cache_dir, rgb=True,
                )
                self._stores[key] = store
                while len(self._stores) > MAX_STORES:
                    self._stores.popitem(last=False)
            self._stores.move_to_end(key)
        return store

    def stored_embedding(self, index: tuple[int, ...]) -> Any | None:
        """The slice's embedding if a stack store already holds it (memory or disk), else None
        (always None with :attr:`tiled`: the stores hold whole-slice embeddings)."""
        if not self._stores or not index or self._tiled:  # stores hold whole-slice embeddings
            return None
        try:
            st = self.stack(index)
        except SamUserError:
            return None
        store = self._stores.get(self._store_key(st))
        if store is None or not store.is_cached(st.z):
            return None
        return store.get(st.z)

    def drop_stores(self) -> None:
        """Forget every stack store (the disk cache, if any, stays)."""
        with self._store_lock:
            self._stores.clear()

    def _drop_layer_stores(self, event: Any) -> None:
        with self._store_lock:
            for key in [k for k, s in self._stores.items() if s.volume.image is event.value]:
                del self._stores[key]

    # ------------------------------------------------------------------ precompute
    def precompute_job(self, index: tuple[int, ...] | None = None) -> Callable[..., int]:
        """``job(progress, cancel) -> slices encoded`` for every slice of the stack on screen."""
        store = self.volume_store(index)
        return lambda progress=None, cancel=None: store.precompute(progress, cancel)

    def precompute_embeddings(self, progress: Any = None, cancel: Any = None, index: tuple[int, ...] | None = None) -> int:
        """Encode every slice of the current stack (``progress(done, total)``; ``cancel`` between slices)."""
        return self.precompute_job(index)(progress, cancel)

    # ------------------------------------------------------------------ seeds from the prompt layers
    def volume_seeds(self, index: tuple[int, ...] | None = None) -> dict[int, dict[int, Any]]:
        """Seeds {object: {slice: Prompt}} from the prompts on every slice of the stack.

        On each prompted slice: no box -> one object from all its points; boxes -> object k is the
        k-th box (drawing order), points join the first box containing them. On the previewed slice
        each object also carries its preview mask (so the candidate chosen with N is kept).
        SAM (x, y) coordinates, converted here from napari (row, col).
        """
        st = self.stack(index)
        seeds: dict[int, dict[int, Any]] = {}
        for z in self._prompted_slices(st):
            lead = st.index(z)
            points_rc, labels, boxes_rc = self.read_prompts(lead)
            pts = None if points_rc is None or not len(points_rc) else rc_to_xy(points_rc)
            if not boxes_rc:
                if pts is None:
                    continue
                objs = [Prompt(points=pts, labels=labels)]
            else:
                boxes = np.stack([box_rc_to_xy(b) for b in boxes_rc])
                coords, labs = assign_points_to_boxes(pts, labels, boxes) if pts is not None else (None, None)
                objs = []
                for k, box in enumerate(boxes):
                    keep = None if coords is None else labs[k] >= 0
                    has = keep is not None and keep.any()
                    objs.append(Prompt(points=coords[k][keep] if has else None,
                                       labels=labs[k][keep] if has else None, box=box))
            if self.preview_index == lead and self.objects is not None and len(self.objects) == len(objs):
                for p, m in zip(objs, self.objects, strict=True):
                    p.mask = m if m.any() else None
            for k, p in enumerate(objs):
                seeds.setdefault(k + 1, {})[z] = p
        return seeds

    def _prompted_slices(self, st: Stack) -> list[int]:
        img, found = self._require_image(), set()
        for layer in (self.points_layer, self.boxes_layer):
            if layer is None or not len(layer.data) or layer.ndim < img.ndim:
                continue
            rows = layer.data if layer is self.points_layer else [v[:1] for v in layer.data]
            coords = to_image_data(layer, np.concatenate([np.reshape(r, (-1, layer.ndim)) for r in rows]), img)
            lead = np.round(coords[:, : st.axis + 1]).astype(int)
            mine = in_slice(coords[:, : st.axis], st.outer) if st.outer else np.ones(len(lead), bool)
            found |= {int(z) for z in lead[mine, st.axis] if 0 <= z < st.n}
        return sorted(found)

    # ------------------------------------------------------------------ 3D propagation
    def volume_job(
        self, index: tuple[int, ...] | None = None, seeds: dict | None = None,
        extend_labels: bool = False, ids: list[int] | None = None, **params: Any,
    ) -> tuple[Callable[..., Any], Callable[[Any], list[int]]]:
        """(job(progress, cancel) -> VolumeResult, apply(result) -> ids written); see :meth:`segment_volume`."""

        img = self._require_image()
        self._require_model()
        st = self.stack(index)
        labels = self.labels_layer
        if tuple(labels.data.shape) != spatial_shape(img):
            raise SamUserError(f"labels layer {labels.name!r} does not have the image's shape {spatial_shape(img)}")
        kw = {**self.volume_params, **params}
        if extend_labels:
            sub = np.asarray(labels.data[st.outer])
            if ids is not None:
                sub = np.where(np.isin(sub, list(ids)), sub, 0)
            if not sub.any():
                raise SamUserError("no labels to extend in this stack")
            kw["labels"], seeds = sub, None
        else:
            seeds = self.volume_seeds(index) if seeds is None else seeds
            if not seeds:
                raise SamUserError("add a point or a box first (on this slice or on any slice of the stack)")
        store = self.volume_store(index)

        def job(progress: Any = None, cancel: Any = None) -> Any:
            return segment_volume(store, seeds=seeds, progress=progress, cancel=cancel, **kw)

        def apply(result: Any) -> list[int]:
            return self._write_volume(st, result, relabel=not extend_labels)

        return job, apply

    def _write_volume(self, st: Stack, result: Any, relabel: bool) -> list[int]:
        labels = self.labels_layer
        lut = {oid: oid for oid in result.ids}
        if relabel:
            start = next_label(labels)
            lut = {oid: start + k for k, oid in enumerate(result.ids)}
        table = np.zeros(max(lut, default=0) + 1, dtype=labels.data.dtype)
        for oid, new in lut.items():
            table[oid] = new
        slices = {
            st.index(z): (table[result.label_slice(z)], [] if relabel else list(result.masks[z]))
            for z in result.slices
        }
        written = write_slices(labels, slices, self.overwrite)
        self.last_volume = result
        if relabel and not result.cancelled:
            self.clear_prompts()
            self._clear_preview()
        self.events.committed(value=written)
        return written

    def segment_volume(
        self, index: tuple[int, ...] | None = None, seeds: dict | None = None,
        progress: Any = None, cancel: Any = None, **params: Any,
    ) -> list[int]:
        """Carry the prompted object(s) through the stack and write them as new ids, one undo step.

        Args:
            index: a slice of the stack (default: on screen); prompts on any slice of it are seeds.
            seeds: {object: {slice: Prompt or dict}} in SAM (x, y) instead of the prompt layers.
            progress, cancel: ``progress(done, total)``; ``cancel`` (callable or Event) between slices.
                Cancelled: the slices finished so far are written (whole slices only).
            params: ``napari_sam.segment_volume`` options over ``volume_params`` (e.g.
                ``iou_threshold=0``, ``max_distance=5``).

        Returns the new ids (existing objects kept unless ``overwrite``); ``last_volume`` holds the
        engine's ``VolumeResult`` (object k there = seed k).
        """
        job, apply = self.volume_job(index, seeds, **params)
        return apply(job(progress, cancel))

    def extend_labels(
        self, ids: list[int] | None = None, index: tuple[int, ...] | None = None,
        progress: Any = None, cancel: Any = None, **params: Any,
    ) -> list[int]:
        """Use the existing labels of the stack (all, or ``ids``) as mask seeds: gaps between labelled
        slices are filled and objects extended past their ends, keeping their ids (one undo step).
        ``keep_seed_masks=False`` re-predicts the labelled slices too (refinement)."""
        job, apply = self.volume_job(index, extend_labels=True, ids=ids, **params)
        return apply(job(progress, cancel))
