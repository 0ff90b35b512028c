"""Prompts in, masks out: the data types of :mod:`napari_sam.volume.propagate`.

- :class:`Prompt`: what the user gave on one slice for one object: points (N, 2) (x, y) with labels
  (N,) (1 positive, 0 negative), a box (4,) (x0, y0, x1, y1), and/or a mask (H, W) bool.
- :class:`VolumeResult`: per-slice masks {slice: {object id: (H, W) bool}} with their predicted IoU,
  and helpers that turn them into label images, so the caller writes everything in one step.
- :func:`seeds_from_labels`: an existing label volume as mask keyframes.
- :func:`mask_box`, :func:`mask_point`: the prompts derived from a previous slice's mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


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
        """A Prompt from a Prompt or a dict with keys points/labels/box/mask; validated against (H, W)."""
        if not isinstance(p, Prompt):
            unknown = set(p) - {"points", "labels", "box", "mask"}
            if unknown:
                raise ValueError(f"unknown prompt keys {sorted(unknown)}; use points, labels, box, mask")
            p = cls(**dict(p))
        pts = None if p.points is None else np.asarray(p.points, np.float32).reshape(-1, 2)
        lab = None
        if pts is not None:
            lab = (
                np.ones(len(pts), np.int64)
                if p.labels is None
                else np.asarray(p.labels, np.int64).reshape(-1)
            )
            if len(lab) != len(pts):
                raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        box = None if p.box is None else np.asarray(p.box, np.float32).reshape(4)
        mask = None if p.mask is None else np.asarray(p.mask, bool)
        if mask is not None and mask.shape != tuple(hw):
            raise ValueError(f"a seed mask must have the slice shape {tuple(hw)}, got {mask.shape}")
        if mask is not None and not mask.any():
            mask = None
        if pts is None and box is None and mask is None:
            raise ValueError("a prompt needs points, a box or a non-empty mask")
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


@dataclass
class VolumeResult:
    """Masks found by ``segment_volume``; slice indices count along ``axis`` of the volume."""

    shape: tuple[int, int, int]  # (n, H, W)
    axis: int = 0
    cancelled: bool = False
    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # slice -> {id: (H, W) bool}
    scores: dict[int, dict[int, float]] = field(default_factory=dict)  # slice -> {id: predicted IoU}
    stopped: dict[int, dict[str, str]] = field(default_factory=dict)  # id -> {"up from 7": reason}
    #: id -> {"up from 7": [volume.stops.Step, ...]}: every step's measures, the failing one last
    trace: dict[int, dict[str, list]] = field(default_factory=dict)

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
        per = self.masks.get(z, {})
        for oid in sorted(per, key=lambda o: self.scores.get(z, {}).get(o, 0.0)):
            out[per[oid]] = oid
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
