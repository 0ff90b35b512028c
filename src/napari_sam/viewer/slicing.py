"""napari layer geometry for SAM: the ONE place where napari (row, col) becomes SAM (x, y).

No Qt here; layers are duck-typed (``ndim``, ``data``, ``rgb``, ``world_to_data``,
``data_to_world``), so the helpers work for any napari layer.

Conventions: napari data coordinates are (..., row, col) with pixel centres on integers;
SAM points are (x, y) = (col, row) and boxes (x0, y0, x1, y1) = (col0, row0, col1, row1), in
pixels of the original 2D slice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

from napari_sam.errors import SamTypeError, SamUserError


# ---------------------------------------------------------------- napari (row, col) -> SAM (x, y)
def rc_to_xy(rc: np.ndarray) -> np.ndarray:
    """(N, 2) napari (row, col) -> (N, 2) SAM (x, y), float32."""
    rc = np.asarray(rc, dtype=np.float32).reshape(-1, 2)
    return np.ascontiguousarray(rc[:, ::-1])


def box_rc_to_xy(corners_rc: np.ndarray) -> np.ndarray:
    """(K, 2) napari (row, col) corners of a box (any K >= 2) -> (4,) SAM (x0, y0, x1, y1)."""
    c = np.asarray(corners_rc, dtype=np.float32).reshape(-1, 2)
    (r0, c0), (r1, c1) = c.min(axis=0), c.max(axis=0)
    return np.array([c0, r0, c1, r1], dtype=np.float32)


def box_arg_to_corners(box: Any) -> list[np.ndarray]:
    """``segment(box=...)`` -> list of (K, D) corner arrays in (.., row, col).

    The shape rule: one box is 4 numbers (row0, col0, row1, col1); a box list is N x 4, one row per
    box (a list of 4-tuples or an (N, 4) array). Napari rectangles (``shapes.data[i]``, (4, D) corner
    arrays) are one box each, or a list of them. The one clash: a (4, 4) numpy array is both 4 boxes and the
    corners of one rectangle of a 4D image, so it is refused; a Python list of 4-tuples is always
    4 boxes.
    """
    if isinstance(box, list | tuple) and len(box) and np.ndim(box[0]) == 2:
        return [_numbers(b, "box corners") for b in box]
    rows = isinstance(box, list | tuple) and len(box) and all(np.ndim(b) == 1 for b in box)
    arr = _numbers(box, "box")
    if arr.ndim == 1 and arr.shape[0] == 4:
        return [arr.reshape(2, 2)]
    if arr.ndim == 2 and arr.shape == (4, 4) and not rows:
        raise SamUserError(
            "ambiguous (4, 4) box array: 4 boxes (row0, col0, row1, col1) or the corners of one 4D rectangle? "
            "Pass 4 boxes as a list of 4-tuples ([tuple(b) for b in boxes]) and a rectangle's corners as a list "
            "holding it ([corners])"
        )
    if arr.ndim == 2 and arr.shape[1] == 4:
        return [row.reshape(2, 2) for row in arr]
    if arr.ndim == 2 and arr.shape[1] >= 2:
        return [arr]
    if arr.ndim == 3:
        return list(arr)
    raise SamUserError(
        f"box must be (row0, col0, row1, col1), N x 4 rows of them, or napari rectangle corners (4, D); "
        f"got shape {arr.shape}"
    )


def _numbers(a: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        raise SamTypeError(
            f"{what} must be numbers in napari (row, col) order, got {a!r:.80}; e.g. box=(row0, col0, row1, col1)"
        ) from None


# ---------------------------------------------------------------- layers
# multiscale image layers: SAM reads the highest-resolution level (level 0, whose pixels are the
# layer's data coordinates, so prompts and the Labels layer need no conversion) when one of its 2D
# slices has at most this many pixels; larger ones are refused (``check_multiscale``)
MAX_MULTISCALE_PIXELS = 8192 * 8192


def check_multiscale(layer: Any) -> None:
    """``SamUserError`` for a multiscale layer whose highest-resolution slices are too large to read whole."""
    if not getattr(layer, "multiscale", False):
        return
    hw = spatial_shape(layer)[-2:]
    if hw[0] * hw[1] > MAX_MULTISCALE_PIXELS:
        raise SamUserError(
            f"multiscale layers are not supported yet beyond {MAX_MULTISCALE_PIXELS // 2**20} Mpx slices: "
            f"{getattr(layer, 'name', '')!r} has {len(layer.data)} levels and its highest-resolution slices are "
            f"{hw[0]}x{hw[1]} ({hw[0] * hw[1] / 2**20:.0f} Mpx). Add one level as its own image layer, e.g. "
            f"viewer.add_image(layer.data[1]), and segment that"
        )


def base_data(layer: Any) -> Any:
    """The layer's array: its highest-resolution level (level 0) for a multiscale layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an image layer without the RGB(A) channel axis (what a matching Labels layer has)."""
    shape = tuple(int(s) for s in base_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def check_index(layer: Any, index: Any) -> tuple[int, ...]:
    """``index`` (leading-axis slice index of an image layer) as a tuple of ints, checked.

    Python's wrap-around does not apply: z = -3 is an error, not the third slice from the end.
    Raises ``SamUserError`` for a wrong length, a non-integer or an index outside the image.
    """
    shape = spatial_shape(layer)[:-2]
    try:
        idx = tuple(index)
    except TypeError:
        idx = (index,)
    if len(idx) != len(shape):
        raise SamUserError(
            f"slice index {idx} has {len(idx)} value(s), the image {getattr(layer, 'name', '')!r} of shape "
            f"{spatial_shape(layer)} needs {len(shape)} (one per slider axis)"
        )
    out = []
    for axis, (i, n) in enumerate(zip(idx, shape, strict=True)):
        if isinstance(i, bool) or not float(i).is_integer():
            raise SamUserError(f"slice index {idx}: axis {axis} needs an integer, got {i!r}")
        if not 0 <= int(i) < n:
            raise SamUserError(
                f"slice index {idx} is outside the image: axis {axis} has slices 0..{n - 1} "
                f"(negative indices do not count from the end)"
            )
        out.append(int(i))
    return tuple(out)


def to_image_data(src: Any, coords: np.ndarray, image: Any) -> np.ndarray:
    """(N, D) data coordinates of layer ``src`` -> (N, image.ndim) data coordinates of ``image``.

    Goes through world coordinates, so each layer's scale/translate/affine is honoured.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, src.ndim)
    out = [np.asarray(image.world_to_data(src.data_to_world(p)), dtype=float) for p in coords]
    return np.asarray(out, dtype=float).reshape(-1, image.ndim)


def current_index(viewer: Any, image: Any) -> tuple[int, ...]:
    """Index of the image's leading (non-displayed) axes for the slice on screen.

    Raises ``SamUserError`` when the canvas does not show the image's last two axes in 2D.
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise SamUserError("SAM works on 2D slices: switch the viewer to 2D display (Ctrl+Y)")
    nd = dims.ndim
    if tuple(dims.displayed) != (nd - 2, nd - 1) or image.ndim > nd:
        raise SamUserError(
            "SAM segments the image's last two axes (row, col): reset the axis order (no transpose/roll)"
        )
    shape = spatial_shape(image)
    pos = np.asarray(image.world_to_data(dims.point), dtype=float)
    lead = [int(np.clip(np.round(p), 0, s - 1)) for p, s in zip(pos[:-2], shape[:-2], strict=True)]
    return tuple(lead)


def slice_image(
    image: Any, index: tuple[int, ...], channel_axis: int | None = None
) -> tuple[np.ndarray, bool]:
    """The 2D slice ``index`` of an image layer, read lazily (only that slice of dask/zarr data).

    Returns (array (H, W) or (H, W, C), is_rgb); a multiscale layer's highest-resolution level (see
    ``check_multiscale``). With ``channel_axis`` (a leading data axis) the
    first three channels along it become an RGB composite, whatever ``index`` says for that axis.
    """
    check_multiscale(image)
    data = base_data(image)
    rgb = bool(getattr(image, "rgb", False))
    if channel_axis is None or rgb:
        return np.asarray(data[tuple(index)]), rgb
    if not 0 <= channel_axis < len(index):
        raise SamUserError(f"channel axis {channel_axis} is not a slider axis of this image")
    n = min(int(data.shape[channel_axis]), 3)
    chans = []
    for c in range(n):
        idx = list(index)
        idx[channel_axis] = c
        chans.append(np.asarray(data[tuple(idx)]))
    while len(chans) < 3:
        chans.append(np.zeros_like(chans[0]))
    return np.stack(chans, axis=-1), True


def in_slice(coords: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """(N,) bool: which (N, D) image-data coordinates lie on the slice ``index`` (leading axes)."""
    coords = np.asarray(coords, dtype=float)
    if not index:
        return np.ones(len(coords), dtype=bool)
    lead = np.round(coords[:, : len(index)])
    return np.all(lead == np.asarray(index, dtype=float)[None], axis=1)


class EmbeddingCache:
    """A small LRU of embeddings keyed by (layer, slice index, image settings, model).

    Embeddings that carry the mask decoder's per-image preparation (``ImageEmbedding.prepared``,
    ~6x the features' memory for SAM) keep it only while among the ``keep_prepared`` most recently
    stored or used entries (the slice on screen and its prefetched neighbours); older entries
    are kept without it (their first click then prepares again)."""

    def __init__(self, maxsize: int = 8, keep_prepared: int = 3) -> None:
        self.maxsize = maxsize
        self.keep_prepared = keep_prepared
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        """The cached value (marked most recent) or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        self._drop_old_preparations()
        return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``, dropping the least recently used entries beyond ``maxsize``."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        self._drop_old_preparations()

    def _drop_old_preparations(self) -> None:
        for key in list(self._items)[: max(0, len(self._items) - self.keep_prepared)]:
            emb = self._items[key]
            if getattr(emb, "prepared", None) is not None:
                self._items[key] = emb.without_preparation()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
