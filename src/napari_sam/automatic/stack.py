"""Stacks and time series: per-slice automatic labels linked into consistent ids across slices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.engine.progress import Cancel, Progress, check_cancel


def iou_matrix(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between the objects of two (H, W) label images.

    Returns (ids_a (n,), ids_b (m,), iou (n, m)); background (0) excluded.
    """
    ids_a, inv_a = np.unique(a, return_inverse=True)
    ids_b, inv_b = np.unique(b, return_inverse=True)
    na, nb = len(ids_a), len(ids_b)
    inter = np.bincount(inv_a.ravel() * nb + inv_b.ravel(), minlength=na * nb).reshape(na, nb)
    area_a, area_b = inter.sum(1), inter.sum(0)
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1)
    ka, kb = ids_a != 0, ids_b != 0
    return ids_a[ka], ids_b[kb], iou[np.ix_(ka, kb)]


def link_slices(prev: np.ndarray, cur: np.ndarray, next_id: int, min_iou: float = 0.5) -> tuple[np.ndarray, int]:
    """Relabel ``cur`` (H, W) so its objects carry the ids of their partners in ``prev`` (H, W).

    Rule: one-to-one matching that maximises the summed IoU (Hungarian, ``scipy.optimize.
    linear_sum_assignment``) between the objects of ``prev`` and ``cur``; a pair is linked only if its
    IoU is >= ``min_iou`` (0.5 makes the match unique even without the assignment). Unlinked objects
    of ``cur`` get new ids ``next_id, next_id + 1, ...`` in order of their label in ``cur``.

    Returns (relabelled int32 slice, the next free id).
    """
    from scipy.optimize import linear_sum_assignment

    ids_p, ids_c, iou = iou_matrix(prev, cur)
    mapping = np.zeros(int(cur.max(initial=0)) + 1, dtype=np.int64)
    linked = np.zeros(len(ids_c), dtype=bool)
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= min_iou:
                mapping[ids_c[c]] = ids_p[r]
                linked[c] = True
    for c in np.flatnonzero(~linked):
        mapping[ids_c[c]] = next_id
        next_id += 1
    return mapping[cur].astype(np.int32), next_id


def stack_labels(
    labels_fn: Callable[..., np.ndarray],
    volume: Any,
    axis: int = 0,
    min_iou: float = 0.5,
    rgb: bool | None = None,
    progress: Progress = None,
    cancel: Cancel = None,
) -> np.ndarray:
    """Run ``labels_fn(slice, cancel=cancel) -> (H, W) labels`` on every slice along ``axis`` and link
    them with :func:`link_slices`. Returns int32 labels shaped like ``volume`` without channels."""
    shape = tuple(volume.shape)
    if rgb is None:
        rgb = len(shape) == 4 and shape[-1] in (3, 4)
    spatial = shape[:-1] if rgb else shape
    if len(spatial) != 3:
        raise ValueError(f"expected a 3D stack (n, H, W) (plus channels if rgb), got shape {shape}")
    axis = axis % 3
    n = spatial[axis]
    out = np.zeros(spatial, dtype=np.int32)
    prev, next_id = None, 1
    for i in range(n):
        check_cancel(cancel)
        index = [slice(None)] * len(shape)
        index[axis] = i
        sl = np.asarray(volume[tuple(index)])
        lab = labels_fn(sl, cancel=cancel)
        if prev is None:
            lab = lab.astype(np.int32)
            next_id = int(lab.max(initial=0)) + 1
        else:
            lab, next_id = link_slices(prev, lab, next_id, min_iou)
        out[tuple(index[:3])] = lab
        prev = lab
        if progress is not None:
            progress(i + 1, n)
    return out
