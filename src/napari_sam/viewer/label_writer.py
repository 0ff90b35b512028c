"""The ONE place that writes into the output Labels layer of ``SegmentAnything``.

Every write goes through ``Labels.data_setitem`` inside ``block_history()``: one committed object is
one undo step (:meth:`LabelWriter.write_objects`), one 3D or automatic action is one undo step
(:meth:`LabelWriter.write_slices`). New objects get ids above every id in the layer; pixels of
other objects are kept unless ``overwrite``. The layer's shape is checked before anything is
written, so a failed action leaves the layer as it was.

A layer whose dtype cannot hold the new ids (a uint8 layer whose ids reach 255) is promoted first
(:func:`promoted_dtype`: int32, or int64 where int32 is too small; every value kept, a warning says
so). Replacing ``layer.data`` keeps napari's undo history valid (its steps hold indices and values,
not the array), so undo works across the promotion. Data that are not a numpy array (dask, zarr)
are not promoted: the write is refused with a message and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_warning

from napari_sam.errors import SamUserError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.slicing import spatial_shape

LABELS_NAME = "SAM labels"


class LabelWriter:
    """Writes objects into the output Labels layer (created as "SAM labels" on first use).

    Args:
        viewer: the napari viewer (the output layer is added to it).
        images: the image being segmented (the layer must have its shape).
        on_layer: ``on_layer(layer, created)`` after the output layer is created or set.
        on_written: ``on_written(ids)`` after each write, with the ids written.
    """

    def __init__(
        self, viewer: Any, images: ImageSource,
        on_layer: Callable[[Labels | None, bool], Any] | None = None,
        on_written: Callable[[list[int]], Any] | None = None,
    ) -> None:
        self.viewer = viewer
        self.images = images
        self.on_layer = on_layer
        self.on_written = on_written
        self.overwrite = False  # write over the pixels of other objects
        self._layer: Labels | None = None

    # ------------------------------------------------------------------ the layer
    @property
    def existing(self) -> Labels | None:
        """The output layer if one is set or was created (never creates one)."""
        return self._layer

    @property
    def layer(self) -> Labels | None:
        """The output layer; created (image-shaped int32, the image's scale and translate) on first
        use once an image is chosen."""
        img = self.images.layer
        if self._layer is None and img is not None:
            self._layer = self.viewer.add_labels(
                np.zeros(spatial_shape(img), dtype=np.int32), name=LABELS_NAME,
                scale=img.scale, translate=img.translate,
            )
            if self.on_layer is not None:
                self.on_layer(self._layer, True)
        return self._layer

    @layer.setter
    def layer(self, layer: Labels | None) -> None:
        if layer is not None and not isinstance(layer, Labels):
            raise SamUserError(f"{getattr(layer, 'name', layer)!r} is not a Labels layer")
        self._layer = layer
        if self.on_layer is not None:
            self.on_layer(layer, False)

    def checked(self) -> Labels:
        """The output layer, after checking that it has the image's shape (``SamUserError`` if not)."""
        img = self.images.require()
        labels = self.layer
        if tuple(labels.data.shape) != spatial_shape(img):
            raise SamUserError(
                f"labels layer {labels.name!r} has shape {tuple(labels.data.shape)}, the image "
                f"{img.name!r} needs {spatial_shape(img)}"
            )
        return labels

    def guard(self, action: str) -> Callable[[], None]:
        """For a job that writes later (``volume``, ``everything``): checks the output layer now and
        returns ``still_valid()``, which raises ``SamUserError`` (nothing written) when the image layer
        or the output Labels layer was removed or replaced since. Without it a new "SAM labels" layer
        would silently receive a result computed for a layer the user deleted."""
        img, labels = self.images.require(), self.checked()

        def still_valid() -> None:
            layers = getattr(self.viewer, "layers", None)
            if self.images.layer is not img or (layers is not None and img not in layers):
                raise SamUserError(
                    f"SAM: {action} stopped: the image layer {img.name!r} was removed or replaced while it ran; "
                    f"nothing was written"
                )
            if self._layer is not labels or (layers is not None and labels not in layers):
                raise SamUserError(
                    f"SAM: {action} stopped: the labels layer {labels.name!r} was removed or replaced while it "
                    f"ran; nothing was written (run it again to write into "
                    f"{'a new ' + repr(LABELS_NAME) if self._layer is None else repr(self._layer.name)})"
                )

        return still_valid

    def next_label(self) -> int:
        """The first id above every id in the output layer."""
        return next_label(self.checked())

    # ------------------------------------------------------------------ writes
    def write_objects(self, index: tuple[int, ...], masks: np.ndarray) -> list[int]:
        """Write (B, H, W) bool masks on slice ``index`` as new ids, ONE undo step per object.

        Objects left without a free pixel (all taken, no ``overwrite``) get no id. Returns the ids.
        """
        labels = self.checked()
        next_id = next_label(labels)
        self.fit(labels, next_id + len(masks) - 1)
        current = np.asarray(labels.data[tuple(index)])
        ids = []
        for mask in masks:
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
        self._written(ids)
        return ids

    def write_slices(self, slices: dict[tuple[int, ...], tuple[np.ndarray, list[int]]]) -> list[int]:
        """Write several (H, W) id images as ONE undo step (see :func:`write_slices`); returns the ids.

        The id images may be of any integer dtype: the layer is promoted first if its dtype cannot
        hold their largest id (see the module doc)."""
        labels = self.checked()
        top = max((int(new.max()) for new, _ in slices.values() if np.size(new)), default=0)
        self.fit(labels, top)
        ids = write_slices(labels, slices, self.overwrite)
        self._written(ids)
        return ids

    def fit(self, labels: Labels, top: int) -> None:
        """Make ``labels`` able to hold id ``top``: promote its data (values kept, a warning says so)
        or raise ``SamUserError`` (nothing written) when it cannot be promoted."""
        dtype = np.dtype(labels.data.dtype)
        if top <= np.iinfo(dtype).max:
            return
        new = promoted_dtype(dtype, top)
        if new is None or not isinstance(labels.data, np.ndarray):
            why = "no integer dtype holds it" if new is None else f"its data are a {type(labels.data).__name__}"
            raise SamUserError(
                f"labels layer {labels.name!r} is {dtype} (ids up to {np.iinfo(dtype).max}) and the new "
                f"object(s) need id {top}, but it cannot be converted ({why}): nothing was written. "
                f"Give a layer of a wider dtype, e.g. layer.data = layer.data.astype('int32')"
            )
        labels.data = labels.data.astype(new)  # every value kept; the undo history stays valid
        show_warning(
            f"SAM: labels layer {labels.name!r} was {dtype} (ids up to {np.iinfo(dtype).max}); converted to "
            f"{new} to hold id {top} (all values kept, undo still works)"
        )

    def _written(self, ids: list[int]) -> None:
        if self.on_written is not None:
            self.on_written(ids)


def write_slices(
    labels: Any, slices: dict[tuple[int, ...], tuple[np.ndarray, list[int]]], overwrite: bool
) -> list[int]:
    """Write several (H, W) id images into a Labels layer (duck-typed) as ONE undo step.

    ``slices``: {leading index: (new ids (H, W), 0 = leave as is; ids to clear first on that slice)}.
    Pixels of other existing objects are kept unless ``overwrite``. Returns the ids written (sorted).
    """
    coords: list[list[np.ndarray]] = []
    values: list[np.ndarray] = []
    for lead, (new, clear) in slices.items():
        cur = np.asarray(labels.data[tuple(lead)])
        after = cur.copy()
        if clear:
            after[np.isin(after, clear)] = 0
        write = new != 0 if overwrite else (new != 0) & (after == 0)
        after[write] = new[write]
        rows, cols = np.nonzero(after != cur)
        if rows.size:
            coords.append([np.full(rows.size, i, dtype=np.intp) for i in lead] + [rows, cols])
            values.append(after[rows, cols])
    if not coords:
        return []
    idx = tuple(np.concatenate(parts) for parts in zip(*coords, strict=True))
    vals = np.concatenate(values).astype(labels.data.dtype, copy=False)
    with labels.block_history():
        labels.data_setitem(idx, vals)
    return sorted(int(v) for v in np.unique(vals) if v != 0)


def promoted_dtype(dtype: Any, top: int) -> np.dtype | None:
    """The integer dtype a Labels layer of ``dtype`` is promoted to, to hold every value of ``dtype``
    and id ``top``: int32 if it can, else int64; None if neither can."""
    for wider in (np.int32, np.int64):
        new = np.promote_types(dtype, wider)
        if new.kind in "iu" and top <= np.iinfo(new).max:
            return new
    return None


def next_label(labels: Any) -> int:
    """The first id above every id in a Labels layer (duck-typed)."""
    return int(np.max(labels.data)) + 1 if np.size(labels.data) else 1
