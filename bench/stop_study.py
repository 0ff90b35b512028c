"""Replay ``segment_volume``'s stop rules on recorded tracks: choose rules on some objects, score others.

One ``segment_volume`` run with every stop rule off records each step's measures
(``VolumeResult.trace``: predicted IoU, stability, overlap with the previous slice, area against the
object's largest slice so far, distance from the keyframe) and its mask. A set of rules keeps each
track up to its first failing step, so the 3D Dice of every combination of thresholds follows from
the recorded masks without running the decoder again (exact for one keyframe per object, except that
``negatives`` then sees other objects that a real run would have stopped: the final figures come
from real runs). Used by ``bench/eval_gonuclear3d.py --study``.
"""

from __future__ import annotations

import numpy as np

from napari_sam.volume.stops import StopRules

OFF = {"iou_threshold": float("-inf"), "stability_threshold": 0.0, "overlap_threshold": 0.0, "min_area": 1,
       "max_growth": None, "min_fraction": None, "max_extent": None, "max_distance": None}

GRID: dict[str, list] = {
    "iou_threshold": [float("-inf"), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "stability_threshold": [0.0, 0.5, 0.7, 0.8, 0.9],
    "overlap_threshold": [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "max_growth": [None, 1.1, 1.25, 1.5, 2.0],
    "min_fraction": [None, 0.1, 0.2, 0.3, 0.4, 0.5],
    "max_extent": [None, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2],
    "max_distance": [None, 4, 6, 8, 10],
}


def record(result, labels_zyx: np.ndarray, seeds: dict) -> dict[int, dict]:
    """Per object: ``gt`` (voxels), ``seed`` (inter, area) of the keyframe, and ``tracks``: a list of
    (steps, inter (n,), area (n,)) with the true overlap of each step's mask."""
    out = {}
    for oid, frames in seeds.items():
        gt = labels_zyx == oid
        z0 = next(iter(frames))
        m0 = result.masks.get(z0, {}).get(oid)
        seed = (0, 0) if m0 is None else (int((m0 & gt[z0]).sum()), int(m0.sum()))
        tracks = []
        for steps in result.trace.get(oid, {}).values():
            inter, area = [], []
            for st in steps:
                m = result.masks.get(st.z, {}).get(oid)
                inter.append(0 if m is None else int((m & gt[st.z]).sum()))
                area.append(st.area)
            tracks.append((steps, np.array(inter), np.array(area)))
        out[oid] = {"gt": int(gt.sum()), "seed": seed, "tracks": tracks}
    return out


def _first_fail(steps, name: str, values: list) -> np.ndarray:
    """(len(values),) index of the first step that rule ``name`` alone stops, per value."""
    out = np.full(len(values), len(steps), np.int64)
    for j, v in enumerate(values):
        rules = StopRules(**{**OFF, name: v})
        out[j] = rules.first_stop(steps)
    return out


def grid_dice(rec: dict[int, dict], ids: list[int], grid: dict[str, list] = GRID) -> tuple[np.ndarray, list[str]]:
    """Mean 3D Dice over ``ids`` for every combination of ``grid`` (an array shaped by the grid)."""
    names = list(grid)
    shape = tuple(len(grid[n]) for n in names)
    total = np.zeros(shape)
    for oid in ids:
        r = rec[oid]
        inter = np.full(shape, float(r["seed"][0]))
        area = np.full(shape, float(r["seed"][1] + r["gt"]))
        for steps, i_arr, a_arr in r["tracks"]:
            if not steps:
                continue
            keep = None
            for k, n in enumerate(names):
                f = _first_fail(steps, n, grid[n]).reshape([-1 if j == k else 1 for j in range(len(names))])
                keep = f if keep is None else np.minimum(keep, f)
            ci = np.concatenate([[0], np.cumsum(i_arr)])
            ca = np.concatenate([[0], np.cumsum(a_arr)])
            inter = inter + ci[keep]
            area = area + ca[keep]
        total += 2 * inter / np.maximum(area, 1)
    return total / max(1, len(ids)), names


def best(rec: dict, ids: list[int], grid: dict[str, list] = GRID) -> tuple[dict, float]:
    """The combination of ``grid`` with the highest mean Dice on ``ids``, and that Dice."""
    dice, names = grid_dice(rec, ids, grid)
    idx = np.unravel_index(int(np.argmax(dice)), dice.shape)
    return {n: grid[n][i] for n, i in zip(names, idx, strict=True)}, float(dice[idx])


def score(rec: dict, ids: list[int], **rules) -> float:
    """Mean Dice on ``ids`` of one set of rules (unset ones off)."""
    grid = {n: [rules.get(n, OFF[n])] for n in GRID}
    return float(grid_dice(rec, ids, grid)[0].reshape(-1)[0])


def one_at_a_time(rec: dict, ids: list[int], base: dict) -> list[tuple[str, object, float]]:
    """Each value of each rule, the others at ``base``: (rule, value, mean Dice on ``ids``)."""
    rows = []
    for n, values in GRID.items():
        for v in values:
            rows.append((n, v, score(rec, ids, **{**base, n: v})))
    return rows

