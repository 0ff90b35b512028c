"""Prompt sampling from ground-truth masks, for training and evaluation.

Masks are boolean (H, W) arrays indexed (row, col) = (y, x); every point returned here is SAM's
(x, y) in the same pixel grid, and boxes are (x0, y0, x1, y1) with inclusive pixel extents.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def _dt_crop(mask: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """Distance to the nearest non-mask pixel (image border counts as outside), on the mask's bbox.

    Returns (dt crop, row offset, col offset) or None for an empty mask.
    """
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1)
    return distance_transform_edt(crop)[1:-1, 1:-1], r0, c0


def center_point(mask: np.ndarray) -> tuple[float, float] | None:
    """The object's centre: the pixel with the largest distance to the background, (x, y); None if empty."""
    res = _dt_crop(mask)
    if res is None:
        return None
    dt, r0, c0 = res
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(c + c0), float(r + r0)


def random_point(mask: np.ndarray, rng: np.random.Generator, center_power: float = 0.0) -> tuple[float, float] | None:
    """A random pixel inside ``mask`` as (x, y); weights ``dt ** center_power`` (0 = uniform)."""
    res = _dt_crop(mask)
    if res is None:
        return None
    dt, r0, c0 = res
    w = dt.ravel() ** center_power if center_power > 0 else (dt.ravel() > 0).astype(np.float64)
    cum = np.cumsum(w)
    idx = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), w.size - 1)
    r, c = divmod(int(idx), dt.shape[1])
    return float(c + c0), float(r + r0)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight (x0, y0, x1, y1) box of the mask (pixel indices), None if empty."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def jitter_box(mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, max_px: float = 20.0) -> np.ndarray | None:
    """SAM's noisy box: each side moved by N(0, noise * side length), capped at ``max_px``."""
    box = mask_box(mask)
    if box is None:
        return None
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    std = np.array([w, h, w, h], dtype=np.float32) * noise
    d = np.clip(rng.normal(0, 1, 4).astype(np.float32) * std, -max_px, max_px)
    out = box + d
    hh, ww = mask.shape
    out[[0, 2]] = np.clip(out[[0, 2]], 0, ww - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, hh - 1)
    if out[2] < out[0]:
        out[[0, 2]] = out[[2, 0]]
    if out[3] < out[1]:
        out[[1, 3]] = out[[3, 1]]
    return out


def corrective_point(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None = None, center_power: float = 1.0
) -> tuple[float, float, int] | None:
    """Next corrective click (x, y, label) from the error region; None when ``pred == gt``.

    False negatives (gt & ~pred) give a positive click (label 1), false positives a negative one (0).
    With ``rng`` None (evaluation) the click goes to the error pixel farthest from the error region's
    boundary, over both regions (the standard NoC protocol); with an ``rng`` the region is chosen with
    probability proportional to its area and the pixel is drawn with weights ``dt ** center_power``.
    """
    fn = gt & ~pred
    fp = pred & ~gt
    if rng is None:
        best = None
        for region, label in ((fn, 1), (fp, 0)):
            res = _dt_crop(region)
            if res is None:
                continue
            dt, r0, c0 = res
            idx = int(np.argmax(dt))
            if best is None or dt.flat[idx] > best[0]:
                r, c = divmod(idx, dt.shape[1])
                best = (dt.flat[idx], float(c + c0), float(r + r0), label)
        return None if best is None else best[1:]
    nfn, nfp = int(fn.sum()), int(fp.sum())
    if nfn + nfp == 0:
        return None
    region, label = (fn, 1) if rng.random() < nfn / (nfn + nfp) else (fp, 0)
    pt = random_point(region, rng, center_power)
    assert pt is not None
    return pt[0], pt[1], label
