"""3D actions of ``SegmentAnything``: segment an object through a stack, extend labels, precompute.

The stack axis is the image's last slider axis (z of (Z, Y, X), t of (T, Y, X), z of (T, Z, Y, X)
within the current t). Long work is split in two so the widget can run it in a worker thread:
``*_job(...)`` captures settings on the GUI thread and returns ``job(progress, cancel)`` (thread-safe,
no layer writes) and, for writes, ``apply(result)`` (GUI thread, one undo step through the
``LabelWriter``). The console methods call both in turn. Embeddings come from the stack's
``EmbeddingStore`` (``StackStores``), made by the background predictor.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.errors import SamTypeError, SamUserError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.label_writer import LabelWriter
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.preview import Preview
from napari_sam.viewer.prompts import PromptLayers, assign_points_to_boxes
from napari_sam.viewer.slicing import box_rc_to_xy, in_slice, rc_to_xy, to_image_data
from napari_sam.viewer.stack import Stack
from napari_sam.viewer.stores import StackStores
from napari_sam.volume.propagate import Prompt, segment_volume
from napari_sam.weights.registry import volume_overrides

# the widget's defaults are the engine's (chosen by measurement, see docs/volume.md)
VOLUME_DEFAULTS: dict[str, Any] = {
    name: inspect.signature(segment_volume).parameters[name].default
    for name in ("prompt", "iou_threshold", "stability_threshold", "overlap_threshold", "min_area", "max_extent",
                 "max_distance")
}


def renamed_seeds(seeds_xy: dict | None, params: dict[str, Any], stacklevel: int = 3) -> dict | None:
    """``seeds_xy``, or the deprecated ``seeds=`` popped from ``params`` (with a ``FutureWarning``): the
    old name did not say that its points are SAM (x, y) while ``segment``'s are napari (row, col)."""
    if "seeds" not in params:
        return seeds_xy
    old = params.pop("seeds")
    if seeds_xy is not None:
        raise SamTypeError("give seeds_xy= only (seeds= is its deprecated old name), not both")
    warnings.warn(
        "segment_volume(seeds=...) is renamed seeds_xy=: its points are SAM (x, y) pixels of the slice, "
        "not napari (row, col) like segment(points=...); pass seeds_xy=", FutureWarning, stacklevel=stacklevel,
    )
    return old


class VolumeActions:
    """Propagation through the stacks of ``images`` into the output layer of ``writer``.

    Seeds come from ``prompts`` (every slice of the stack) and, on the previewed slice, from the
    masks ``preview`` shows; a finished propagation of new objects clears both.
    ``params``: ``segment_volume`` options used when not given; ``last``: the last ``VolumeResult``.
    """

    def __init__(
        self, images: ImageSource, models: ModelSlot, stores: StackStores, prompts: PromptLayers,
        preview: Preview, writer: LabelWriter,
    ) -> None:
        self.images = images
        self.models = models
        self.stores = stores
        self.prompts = prompts
        self.preview = preview
        self.writer = writer
        self.params: dict[str, Any] = dict(VOLUME_DEFAULTS)
        self.last: Any = None

    def use_model_rules(self) -> None:
        """Reset the stop rules in ``params`` to the current model's: ``segment_volume``'s defaults with the
        registry's ``volume`` overrides for it (called when a model is set; other options are kept)."""
        rules = {k: v for k, v in VOLUME_DEFAULTS.items() if k != "prompt"}
        self.params.update({**rules, **volume_overrides(self.models.name)})

    # ------------------------------------------------------------------ precompute
    def precompute_job(self, index: tuple[int, ...] | None = None) -> Callable[..., int]:
        """``job(progress, cancel) -> slices encoded`` for every slice of the stack of ``index``."""
        store = self.stores.store(index)
        def job(progress: Any = None, cancel: Any = None) -> int:
            with self.models.exclusive("precompute embeddings"):
                return store.precompute(progress, cancel)

        return job

    # ------------------------------------------------------------------ seeds from the prompt layers
    def seeds(self, index: tuple[int, ...] | None = None) -> dict[int, dict[int, Any]]:
        """Seeds {object: {slice: Prompt}} from the prompts on every slice of the stack.

        On each prompted slice: no box -> one object from all its points; boxes -> object k is the
        k-th box (drawing order), points join the first box containing them. On the previewed slice
        each object also carries its preview mask (so the candidate chosen with N is kept).
        SAM (x, y) coordinates, converted here from napari (row, col).
        """
        st = self.images.stack(index)
        objects, shown = self.preview.objects, self.preview.index
        seeds: dict[int, dict[int, Any]] = {}
        for z in self._prompted_slices(st):
            lead = st.index(z)
            points_rc, labels, boxes_rc = self.prompts.read_prompts(lead)
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
            if shown == lead and objects is not None and len(objects) == len(objs):
                for p, m in zip(objs, objects, strict=True):
                    p.mask = m if m.any() else None
            for k, p in enumerate(objs):
                seeds.setdefault(k + 1, {})[z] = p
        return seeds

    def _prompted_slices(self, st: Stack) -> list[int]:
        img, found = self.images.require(), set()
        points, boxes = self.prompts.points_layer, self.prompts.boxes_layer
        for layer in (points, boxes):
            if layer is None or not len(layer.data) or layer.ndim < img.ndim:
                continue
            rows = layer.data if layer is points else [v[:1] for v in layer.data]
            coords = to_image_data(layer, np.concatenate([np.reshape(r, (-1, layer.ndim)) for r in rows]), img)
            lead = np.round(coords[:, : st.axis + 1]).astype(int)
            mine = in_slice(coords[:, : st.axis], st.outer) if st.outer else np.ones(len(lead), bool)
            found |= {int(z) for z in lead[mine, st.axis] if 0 <= z < st.n}
        return sorted(found)

    # ------------------------------------------------------------------ 3D propagation
    def job(
        self, index: tuple[int, ...] | None = None, seeds: dict | None = None,
        extend_labels: bool = False, ids: list[int] | None = None, **params: Any,
    ) -> tuple[Callable[..., Any], Callable[[Any], list[int]]]:
        """(job(progress, cancel) -> VolumeResult, apply(result) -> ids written).

        ``extend_labels``: the output layer's labels of the stack (all, or ``ids``) are the seeds and
        keep their ids; otherwise ``seeds`` (default: from the prompt layers) become new ids.
        """
        self.images.require()
        self.models.require()
        st = self.images.stack(index)
        labels = self.writer.checked()
        still_valid = self.writer.guard("extend labels" if extend_labels else "3D segmentation")
        kw = {**self.params, **params}
        if extend_labels:
            sub = np.asarray(labels.data[st.outer])
            if ids is not None:
                sub = np.where(np.isin(sub, list(ids)), sub, 0)
            if not sub.any():
                raise SamUserError("no labels to extend in this stack")
            kw["labels"], seeds = sub, None
        else:
            if seeds is not None:
                if not isinstance(seeds, dict) or not all(isinstance(v, dict) for v in seeds.values()):
                    raise SamTypeError(
                        f"seeds_xy must be {{object id: {{slice: Prompt or dict}}}}, e.g. {{1: {{5: {{'points': "
                        f"[[x, y]]}}}}}}; got {seeds!r:.80}"
                    )
                for obj, per_slice in seeds.items():
                    bad = [z for z in per_slice if isinstance(z, bool) or not float(z).is_integer()
                           or not 0 <= int(z) < st.n]
                    if bad:
                        raise SamUserError(
                            f"seeds of object {obj!r} are on slice(s) {bad} outside the stack: its slices "
                            f"are 0..{st.n - 1} (negative indices do not count from the end)"
                        )
            given = seeds is not None
            seeds = self.seeds(index) if seeds is None else seeds
            if not seeds:
                raise SamUserError("add a point or a box first (on this slice or on any slice of the stack)")
        store = self.stores.store(index)
        if not extend_labels and given:  # checked here, on the calling thread, not in the job's worker
            hw = tuple(store.slice_shape[:2])
            seeds = {obj: {int(z): Prompt.coerce(p, hw) for z, p in per.items()} for obj, per in seeds.items()}

        def job(progress: Any = None, cancel: Any = None) -> Any:
            with self.models.exclusive("extend labels in 3D" if extend_labels else "3D segmentation"):
                return segment_volume(store, seeds=seeds, progress=progress, cancel=cancel, **kw)

        def apply(result: Any) -> list[int]:
            still_valid()  # the image or labels layer removed mid-job: say so, write nothing
            return self._write(st, result, relabel=not extend_labels)

        return job, apply

    def _write(self, st: Stack, result: Any, relabel: bool) -> list[int]:
        lut = {oid: oid for oid in result.ids}
        if relabel:
            start = self.writer.next_label()
            lut = {oid: start + k for k, oid in enumerate(result.ids)}
        table = np.zeros(max(lut, default=0) + 1, dtype=np.int64)  # the writer fits the layer's dtype
        for oid, new in lut.items():
            table[oid] = new
        slices = {
            st.index(z): (table[result.label_slice(z)], [] if relabel else list(result.masks[z]))
            for z in result.slices
        }
        written = self.writer.write_slices(slices)
        self.last = result
        if relabel and not result.cancelled:  # the prompts became objects
            self.prompts.clear_prompts()
            self.preview.clear()
        return written
