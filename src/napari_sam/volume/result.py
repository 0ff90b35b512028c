"""Prompts in, masks out: the data types of :mod:`napari_sam.volume.propagate`.

- :class:`Prompt`: what the user gave on one slice for one object: points (N, 2) (x, y) with labels
  (N,) (1 positive, 0 negative), a box (4,) (x0, y0, x1, y1), and/or a mask (H, W) bool.
- :class:`VolumeResult`: per-slice masks {slice: {object id: (H, W) bool}} with their predicted IoU,
  and helpers that turn them into label images, so the caller writes everything in one step. The
  masks are kept as their bounding-box crops (:class:`SliceMasks`), so a result's memory grows with
  the objects, not with the slices' size: a stack larger than memory can be carried slice by slice.
- :func:`seeds_from_labels`: an existing label volume as mask keyframes.
- :func:`mask_box`, :func:`mask_point`: the prompts derived from a previous slice's mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_sam.errors import SamTypeError, SamUserError


def mask_box(mask: np.ndarray, margin: float = 0.0, hw: tuple[int, int] | None = None) -> np.ndarray:
    """(4,) float32 (x0, y0, x1, y1) box of a (H, W) bool mask (inclusive max, like SAM's
    ``batched_mask_to_box``), widened on each side by ``margin`` x its side (at least 1 px when
    ``margin`` > 0) and clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot take the box of an empty mask")
    h, w = hw if hw is not None else mask.shape[:2]
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    if margin > 0:
        dy, dx = max(1.0, margin * (y1 - y0 + 1)), max(1.0, margin * (x1 - x0 + 1))
        y0, y1, x0, x1 = max(0, y0 - dy), min(h - 1, y1 + dy), max(0, x0 - dx), min(w - 1, x1 + dx)
    return np.array([x0, y0, x1, y1], np.float32)


def mask_point(mask: np.ndarray) -> np.ndarray:
    """(2,) float32 (x, y) of the pixel deepest inside a (H, W) bool mask (maximum of the Euclidean
    distance transform; the image border counts as outside)."""
    sl = ndimage.find_objects(mask.astype(np.uint8))
    if not sl or sl[0] is None:
        raise ValueError("cannot place a point in an empty mask")
    crop = np.pad(mask[sl[0]], 1)
    dist = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([c - 1 + sl[0][1].start, r - 1 + sl[0][0].start], np.float32)


@dataclass
class Prompt:
    """Prompts for one object on one slice; coordinates in pixels of the slice, (x, y) order."""

    points: np.ndarray | None = None  # (N, 2) x, y
    labels: np.ndarray | None = None  # (N,) 1 positive / 0 negative
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) bool

    @classmethod
    def coerce(cls, p: Prompt | Mapping, hw: tuple[int, int]) -> Prompt:
        """A Prompt from a Prompt or a dict with keys points/labels/box/mask; validated against (H, W)
        (``SamUserError``, ``SamTypeError`` for non-numbers, saying what was given and what is expected)."""
        if not isinstance(p, Prompt):
            if not isinstance(p, Mapping):
                raise SamTypeError(
                    f"a seed must be a Prompt or a dict with keys points, labels, box, mask; got "
                    f"{type(p).__name__} {p!r:.60}. Seeds are {{object id: {{slice: {{'points': [[x, y]]}}}}}}"
                )
            unknown = set(p) - {"points", "labels", "box", "mask"}
            if unknown:
                raise SamUserError(f"unknown prompt keys {sorted(unknown)}; use points, labels, box, mask")
            p = cls(**dict(p))
        pts = None if p.points is None else _seed_points(p.points)
        lab = None
        if pts is not None:
            lab = np.ones(len(pts), np.int64) if p.labels is None else _seed_labels(p.labels)
            if len(lab) != len(pts):
                raise SamUserError(f"a seed has {len(pts)} point(s) but {len(lab)} label(s): give one label per point")
        box = None if p.box is None else _seed_box(p.box)
        mask = None if p.mask is None else np.asarray(p.mask, bool)
        if mask is not None and mask.shape != tuple(hw):
            raise SamUserError(f"a seed mask must have the slice shape {tuple(hw)}, got {mask.shape}")
        if mask is not None and not mask.any():
            mask = None
        if pts is None and box is None and mask is None:
            raise SamUserError("a seed needs points, a box or a non-empty mask; got none of them")
        return cls(pts, lab, box, mask)

    def to_sam(self) -> dict:
        """dict(points, labels, box) for the decoder; a mask adds its box and (without points) its
        deepest point."""
        points, labels, box = self.points, self.labels, self.box
        if self.mask is not None:
            if box is None:
                box = mask_box(self.mask)
            if points is None:
                points, labels = mask_point(self.mask)[None], np.ones(1, np.int64)
        return {"points": points, "labels": labels, "box": box}


def seeds_from_labels(
    labels: np.ndarray, axis: int = 0, ids: Iterable[int] | None = None, keyframes: str = "all"
) -> dict[int, dict[int, Prompt]]:
    """Mask keyframes from an (n, H, W) label volume (slices along ``axis``; 0 = background).

    ``keyframes='all'``: every slice where an object has pixels (gaps between them get filled, the
    object is extended past its first and last slice); ``'largest'``: only its largest slice.
    Returns {object id: {slice: Prompt(mask=...)}}.
    """
    lab = np.moveaxis(np.asarray(labels), axis, 0)
    want = None if ids is None else {int(i) for i in ids}
    seeds: dict[int, dict[int, Prompt]] = {}
    for z in range(lab.shape[0]):
        sl = lab[z]
        for oid in np.unique(sl):
            if oid == 0 or (want is not None and int(oid) not in want):
                continue
            seeds.setdefault(int(oid), {})[z] = Prompt(mask=sl == oid)
    if keyframes == "largest":
        seeds = {o: dict([max(fr.items(), key=lambda kv: kv[1].mask.sum())]) for o, fr in seeds.items()}
    elif keyframes != "all":
        raise ValueError(f"keyframes must be 'all' or 'largest', not {keyframes!r}")
    return seeds


Crop = tuple[int, int, np.ndarray]  # (y0, x0, bool crop of the bounding box)


def crop_mask(mask: np.ndarray) -> Crop:
    """A (H, W) bool mask as (y0, x0, the crop of its bounding box); an empty mask gives a (0, 0) crop."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, np.zeros((0, 0), bool)
    y0, x0 = int(rows[0]), int(cols[0])
    return y0, x0, mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1].copy()


def uncrop_mask(crop: Crop, hw: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of a :func:`crop_mask`."""
    y0, x0, c = crop
    full = np.zeros(hw, bool)
    full[y0 : y0 + c.shape[0], x0 : x0 + c.shape[1]] = c
    return full


class SliceMasks(MutableMapping):
    """{object id: (H, W) bool mask} of one slice, each kept as the crop of its bounding box.

    Reading a mask gives a full (H, W) array (a new one each time); :meth:`paint_into` writes the
    crops without making it."""

    def __init__(self, hw: tuple[int, int], masks: Mapping[int, np.ndarray] | None = None) -> None:
        self.hw = (int(hw[0]), int(hw[1]))
        self._crops: dict[int, Crop] = {}
        for oid, m in (masks or {}).items():
            self[oid] = m

    def __setitem__(self, oid: int, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        if mask.shape != self.hw:
            raise ValueError(f"a mask of this result must have the slice shape {self.hw}, got {mask.shape}")
        self._crops[oid] = crop_mask(mask)

    def __getitem__(self, oid: int) -> np.ndarray:
        return uncrop_mask(self._crops[oid], self.hw)

    def __delitem__(self, oid: int) -> None:
        del self._crops[oid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._crops)

    def __len__(self) -> int:
        return len(self._crops)

    def paint_into(self, out: np.ndarray, oid: int, value: int) -> None:
        """``out[mask of oid] = value`` for a (H, W) ``out``."""
        y0, x0, crop = self._crops[oid]
        out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]][crop] = value

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for _, _, c in self._crops.values())


class _VolumeMasks(dict):
    """{slice: SliceMasks}: a plain dict of masks stored into it (``masks[z] = {...}``,
    ``masks.setdefault(z, {})``) becomes a :class:`SliceMasks`."""

    def __init__(self, hw: tuple[int, int], items: Mapping[int, Mapping[int, np.ndarray]] | None = None) -> None:
        super().__init__()
        self.hw = hw
        for z, per in (items or {}).items():
            self[z] = per

    def _wrap(self, per: Mapping[int, np.ndarray]) -> SliceMasks:
        return per if isinstance(per, SliceMasks) and per.hw == self.hw else SliceMasks(self.hw, per)

    def __setitem__(self, z: int, per: Mapping[int, np.ndarray]) -> None:
        super().__setitem__(z, self._wrap(per))

    def setdefault(self, z: int, default: Mapping[int, np.ndarray] | None = None) -> SliceMasks:
        if z not in self:
            self[z] = default or {}
        return self[z]

    def update(self, *args, **kwargs) -> None:
        for z, per in dict(*args, **kwargs).items():
            self[z] = per


@dataclass
class VolumeResult:
    """Masks found by ``segment_volume``; slice indices count along ``axis`` of the volume."""

    shape: tuple[int, int, int]  # (n, H, W)
    axis: int = 0
    cancelled: bool = False
    masks: dict[int, SliceMasks] = field(default_factory=dict)  # slice -> {id: (H, W) bool}, kept cropped
    scores: dict[int, dict[int, float]] = field(default_factory=dict)  # slice -> {id: predicted IoU}
    stopped: dict[int, dict[str, str]] = field(default_factory=dict)  # id -> {"up from 7": reason}
    #: id -> {"up from 7": [volume.stops.Step, ...]}: every step's measures, the failing one last
    trace: dict[int, dict[str, list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.masks = _VolumeMasks(tuple(self.shape[1:]), self.masks)

    @property
    def slices(self) -> list[int]:
        """Slices that hold at least one mask, ascending."""
        return sorted(self.masks)

    @property
    def ids(self) -> list[int]:
        return sorted({oid for per in self.masks.values() for oid in per})

    def object_masks(self, oid: int) -> dict[int, np.ndarray]:
        """{slice: (H, W) bool} of one object."""
        return {z: per[oid] for z, per in sorted(self.masks.items()) if oid in per}

    def label_slice(self, z: int, dtype=np.int32) -> np.ndarray:
        """(H, W) labels of slice ``z``; where objects overlap, the higher predicted IoU wins."""
        out = np.zeros(self.shape[1:], dtype)
        per = self.masks.get(z)
        for oid in sorted(per or (), key=lambda o: self.scores.get(z, {}).get(o, 0.0)):
            per.paint_into(out, oid, oid)
        return out

    def to_labels(self, dtype=np.int32) -> np.ndarray:
        """The whole result as a label volume, shaped like the input volume (slices along ``axis``)."""
        vol = np.zeros(self.shape, dtype)
        for z in self.masks:
            vol[z] = self.label_slice(z, dtype)
        return np.moveaxis(vol, 0, self.axis)

    def paint(self, labels: np.ndarray, overwrite: bool = False) -> list[int]:
        """Write into ``labels`` (shaped like the volume) in place; returns the slices changed.

        Per slice, each object's old pixels are cleared first (so a refined object replaces itself);
        pixels of other objects are kept unless ``overwrite``.
        """
        view = np.moveaxis(labels, self.axis, 0)
        for z in self.slices:
            sl = view[z]
            new = self.label_slice(z, labels.dtype)
            sl[np.isin(sl, list(self.masks[z]))] = 0
            write = new != 0 if overwrite else (new != 0) & (sl == 0)
            sl[write] = new[write]
        return self.slices


_XY = (
    "seed points are (x, y) pixels of their slice (x = column, y = row); the slice is the key of the "
    "seeds dict: {object: {z: {'points': [[x, y]]}}}"
)


def _numbers(a: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError):
        raise SamTypeError(f"seed {what} must be numbers, got {a!r:.60}") from None
    if not np.isfinite(arr).all():
        raise SamUserError(f"seed {what} must be finite numbers, got {arr.ravel().tolist()[:8]}: remove the NaN/inf")
    return arr


def _seed_points(points: object) -> np.ndarray:
    """(N, 2) float32 (x, y), or ``SamUserError`` naming the shape given (and (z, y, x) rows for what they are)."""
    pts = _numbers(points, "points")
    if pts.ndim == 1 and pts.shape[0] == 2:
        return pts[None]
    if pts.ndim == 2 and pts.shape[1] == 2 and len(pts):
        return pts
    if pts.shape[-1:] == (3,) and pts.ndim <= 2:
        z = pts.reshape(-1, 3)
        raise SamUserError(
            f"seed points have shape {pts.shape}: three values per point look like napari (z, y, x) rows "
            f"(first {z[0].tolist()}), but {_XY}. Convert with points[:, [2, 1]] and use the z as the key, "
            f"or SegmentAnything.segment_volume() with the prompt layers"
        )
    raise SamUserError(f"seed points must have shape (N, 2), got {pts.shape}: {_XY}")


def _seed_labels(labels: object) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind not in "biuf" or not np.isin(lab, (0, 1)).all():
        raise SamUserError(f"seed labels must be 1 (positive) or 0 (negative), got {lab.ravel().tolist()[:8]}")
    return lab.astype(np.int64).reshape(-1)


def _seed_box(box: object) -> np.ndarray:
    """(4,) float32 (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1."""
    b = _numbers(box, "box")
    if b.size != 4:
        hint = " (a 3D box? boxes are 2D, per slice: one per slice key)" if b.size == 6 else ""
        raise SamUserError(f"a seed box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}{hint}")
    b = b.reshape(4)
    if b[0] > b[2] or b[1] > b[3]:
        raise SamUserError(
            f"a seed box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {b.tolist()}: swap the "
            f"corners; (row, col) boxes from napari are (y0, x0, y1, x1)"
        )
    return b
