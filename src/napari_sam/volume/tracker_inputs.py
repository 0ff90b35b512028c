"""Input checks and output clean-up of :mod:`napari_sam.volume.tracker`: prompts in SAM's conventions
checked with messages a user can act on, and Meta's optional hole filling of mask logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_sam.errors import SamUserError

__all__ = ["check_prompt", "fill_holes"]


def check_prompt(
    points: Any, labels: Any, box: Any, mask: Any, clear: bool, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validated (points (N, 2) float32, labels (N,) int64, box (4,) or None, mask (H, W) or None)."""
    try:
        pts = (
            np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        )
        lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        bx = None if box is None else np.asarray(box, np.float32).reshape(4)
    except (TypeError, ValueError) as e:
        raise SamUserError(f"prompts must be numbers: points (N, 2) x, y; labels (N,); box (4,): {e}") from e
    if len(lab) != len(pts):
        raise SamUserError(f"{len(pts)} points but {len(lab)} labels")
    if not np.isin(lab, (0, 1)).all():
        raise SamUserError(
            f"point labels must be 1 (positive) or 0 (negative), got {sorted(set(lab.tolist()))}"
        )
    if not (np.isfinite(pts).all() and (bx is None or np.isfinite(bx).all())):
        raise SamUserError("points and boxes must be finite numbers")
    msk = None
    if mask is not None:
        msk = np.asarray(mask).astype(bool)
        if msk.shape != tuple(hw):
            raise SamUserError(f"a mask prompt must have the slice shape {hw}, got {msk.shape}")
        if not msk.any():
            raise SamUserError("the mask prompt is empty: draw the object, or give points or a box")
        if len(pts) or bx is not None:
            raise SamUserError("a mask prompt cannot be combined with points or a box on the same slice")
    elif not len(pts) and bx is None:
        raise SamUserError("empty prompt: give points, a box or a non-empty mask")
    if bx is not None and not clear:
        raise SamUserError("a box replaces the clicks on its slice: use clear=True with a box")
    return pts, lab, bx, msk


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """``(B, 1, h, w)`` logits with their small background regions (8-connected components of
    ``<= 0``, border ones included, as Meta's ``fill_holes_in_mask_scores``) of at most ``max_area``
    pixels set to 0.1."""
    out = logits.clone()
    for b in range(logits.size(0)):
        bg = (logits[b, 0] <= 0).cpu().numpy()
        lab, num = ndimage.label(bg, structure=np.ones((3, 3), bool))
        if num == 0:
            continue
        areas = np.bincount(lab.ravel())
        hole = (lab > 0) & (areas[lab] <= max_area)
        out[b, 0][torch.from_numpy(hole).to(out.device)] = 0.1
    return out
