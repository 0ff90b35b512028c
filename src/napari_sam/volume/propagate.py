"""Carry objects through a stack or time series, slice by slice (see docs/volume.md).

``segment_volume(store_or_predictor, volume, seeds)`` takes prompts on a few slices ("keyframes")
per object and predicts the object on every other slice, walking away from each keyframe:

1. keyframes are predicted from their own prompts (one ``predict_batch`` per slice and prompt kind);
2. an ascending sweep carries every object up from its keyframes, a descending sweep down; at each
   slice all objects that move there share one ``predict_batch`` call. Each step prompts with what
   ``prompt`` names, derived from the previous slice: ``box`` (bounding box of the previous mask,
   widened by ``box_margin`` of its side), ``point`` (one positive point at the maximum of the
   distance transform of the previous mask) and ``mask`` (the previous low-res logits as
   ``mask_input``);
3. an object stops in a direction (that slice is dropped) when its mask has fewer than ``min_area``
   pixels, its predicted IoU is below ``iou_threshold``, its stability (on the low-res logits, SAM's
   offset 1.0) is below ``stability_threshold``, its IoU with the previous slice's mask is below
   ``overlap_threshold``, its area is more than ``max_growth`` times (or less than ``min_fraction``
   of) the area of its largest slice so far, or it is further from its keyframe than ``max_extent``
   times the radius of that largest slice (``volume.stops``; every step's measures are kept in
   ``VolumeResult.trace``);
4. between two keyframes of one object both sweeps run; each slice takes the mask carried from the
   nearer keyframe (ties: the higher predicted IoU), or the one that reached it if the other stopped.

With a SAM 2 model the objects are carried by SAM 2's memory instead (``volume.tracker``: the
keyframes prompt it, it propagates both ways from the first of them, its object score ends an
object); the per-slice options above then do not apply.

Cancel (a callable or ``threading.Event``) is checked between slices; the result then holds only
whole slices: those every planned step has passed. Coordinates: prompts are SAM's (x, y) points and
(x0, y0, x1, y1) boxes in pixels of a slice; slice indices count along ``axis``. For (T, Z, Y, X) pass
``data[t]`` (and an ``EmbeddingStore`` for it); a (T, Y, X) series is a volume with axis 0 = t.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from napari_sam.engine.progress import AUTO, Cancel, Progress, is_cancelled, resolve_progress
from napari_sam.errors import SamTypeError, SamUserError
from napari_sam.volume.keyframes import is_sam2, track_keyframes
from napari_sam.volume.result import (
    Crop,
    Prompt,
    VolumeResult,
    crop_mask,
    mask_box,
    mask_point,
    seeds_from_labels,
    uncrop_mask,
)
from napari_sam.volume.stops import DEFAULT_RULES, Step, StopRules, stability
from napari_sam.volume.store import EmbeddingStore

__all__ = ["segment_volume", "seeds_from_labels", "Prompt", "VolumeResult"]


@dataclass
class _Track:
    oid: int
    step: int  # +1 ascending, -1 descending
    start: int  # keyframe slice
    end: int  # last slice to predict (inclusive)
    mask: np.ndarray | None = None  # previous (H, W) bool
    logits: np.ndarray | None = None  # previous (1, 256, 256)
    alive: bool = True
    reason: str = ""
    largest: int = 0  # the largest mask area so far (keyframe included)
    steps: list[Step] = field(default_factory=list)
    out: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)

    def covers(self, z: int) -> bool:
        return min(self.start + self.step, self.end) <= z <= max(self.start + self.step, self.end)


def _predict(predictor, prompts: list[dict], multimask: bool):
    """One predict_batch for B prompt dicts of one kind -> masks (B,H,W), scores (B,), logits (B,1,h,w)."""
    b = len(prompts)
    coords = labels = boxes = mask_input = None
    n = max((len(p["points"]) for p in prompts if p.get("points") is not None), default=0)
    if n:
        coords, labels = np.zeros((b, n, 2), np.float32), np.full((b, n), -1, np.int64)
        for k, p in enumerate(prompts):
            if p.get("points") is not None and len(p["points"]):
                coords[k, : len(p["points"])], labels[k, : len(p["points"])] = p["points"], p["labels"]
    if prompts[0].get("box") is not None:
        boxes = np.stack([np.asarray(p["box"], np.float32) for p in prompts])
    if prompts[0].get("mask_input") is not None:
        mask_input = np.stack([p["mask_input"] for p in prompts])
    masks, scores, low = predictor.predict_batch(
        coords, labels, boxes, mask_input, multimask_output=multimask
    )
    best = scores.argmax(axis=1)
    idx = np.arange(b)
    return masks[idx, best], scores[idx, best], low[idx, best][:, None]


def _seed_slice(z: object, oid: object, n: int, axis: int) -> int:
    """A seed's slice key as an int in 0..n-1 (``SamUserError`` otherwise: no wrap-around)."""
    if isinstance(z, bool) or not isinstance(z, int | np.integer) or not 0 <= int(z) < n:
        raise SamUserError(
            f"seeds of object {oid!r} are on slice {z!r}, but the volume has slices 0..{n - 1} along axis {axis}: "
            f"the keys are slice indices (negative ones do not count from the end)"
        )
    return int(z)


def _kind(p: dict) -> tuple:
    return tuple(p.get(k) is not None for k in ("points", "box", "mask_input"))


def segment_volume(
    store_or_predictor,
    volume=None,
    seeds: Mapping[int, Mapping[int, Prompt | dict]] | None = None,
    *,
    labels: np.ndarray | None = None,
    axis: int = 0,
    prompt: str = "box+point+mask",
    box_margin: float = 0.1,
    iou_threshold: float = DEFAULT_RULES.iou_threshold,
    stability_threshold: float = DEFAULT_RULES.stability_threshold,
    overlap_threshold: float = DEFAULT_RULES.overlap_threshold,
    min_area: int = DEFAULT_RULES.min_area,
    max_distance: int | None = DEFAULT_RULES.max_distance,
    max_growth: float | None = DEFAULT_RULES.max_growth,
    min_fraction: float | None = DEFAULT_RULES.min_fraction,
    max_extent: float | None = DEFAULT_RULES.max_extent,
    multimask: bool = False,
    negatives: bool = True,
    keep_seed_masks: bool = True,
    progress: Progress | str = AUTO,
    cancel: Cancel = None,
) -> VolumeResult:
    """Segment objects through a volume from prompts on some of its slices.

    Args:
        store_or_predictor: an ``EmbeddingStore`` (its volume and axis are used) or a ``SamPredictor``
            (then ``volume`` is required and a memory-only store is made).
        volume: (n, H, W) or (n, H, W, 3) array-like; ignored when a store is given.
        seeds: {object id: {slice index: Prompt or dict(points=(N,2) xy, labels=(N,), box=(4,) xyxy,
            mask=(H,W) bool)}}; several slices per object fill the gaps between them.
        labels: an existing (n, H, W) label volume (along ``axis``); every labelled slice of every
            object becomes a mask keyframe (see :func:`seeds_from_labels`), merged with ``seeds``.
        prompt: which derived prompts carry an object to the next slice: '+'-joined subset of
            ``box``, ``point``, ``mask``.
        box_margin: the previous mask's box is widened by this fraction of its side (at least 1 px).
        iou_threshold, stability_threshold, overlap_threshold, min_area, max_growth, min_fraction, max_extent:
            stop criteria (module doc, :class:`napari_sam.volume.stops.StopRules`; None: rule off).
        max_distance: stop after this many slices away from a keyframe (None: no limit).
        multimask: predict 3 masks per step and keep the best-scored (else SAM's single mask).
        negatives: add, as negative points, the deepest points of the other objects (moving the
            same way) that fall inside an object's box (helps with touching objects).
        keep_seed_masks: mask keyframes keep the given mask (else SAM re-predicts them from their
            box and interior point: refinement).
        progress: ``progress(done, total)`` after each slice step (default ``"auto"``: a terminal bar when
            standard error is a terminal, :func:`napari_sam.engine.progress.resolve_progress`); cancel: see
            the module doc.

    Returns:
        a :class:`VolumeResult` (per-slice {id: (H, W) bool mask}), to be written in one step.
    """
    if isinstance(store_or_predictor, EmbeddingStore):
        store = store_or_predictor
    else:
        if volume is None:
            raise SamUserError("a volume is required when a predictor (not an EmbeddingStore) is given: "
                               "segment_volume(predictor, volume, seeds)")
        store = EmbeddingStore(store_or_predictor, volume, axis=axis)
    predictor, n = store.predictor, store.n
    hw = store.slice_shape[:2]
    progress = resolve_progress(progress, "segment_volume")
    use = set(prompt.split("+"))
    if not use or not use <= {"box", "point", "mask"}:
        raise SamUserError(f"prompt must be a '+'-joined subset of box, point, mask (e.g. 'box+point'); got {prompt!r}")
    keyframes: dict[int, dict[int, Prompt]] = {}
    if labels is not None:
        labels = np.asarray(labels)
        vol_shape = tuple(int(s) for s in store.volume.shape)
        expected = vol_shape[:-1] if store.rgb else vol_shape
        if labels.shape != expected:
            raise SamUserError(
                f"labels has shape {labels.shape} but the volume has shape {vol_shape}"
                f"{' (colour last)' if store.rgb else ''}: labels must have shape {expected}, the volume's "
                f"without its colour axis, slices along axis {store.axis}"
            )
        keyframes.update(seeds_from_labels(labels, axis=store.axis))
    for oid, frames in (seeds or {}).items():
        if not isinstance(frames, Mapping):
            raise SamTypeError(
                f"seeds must be {{object id: {{slice: Prompt or dict}}}}; object {oid!r} has {type(frames).__name__} "
                f"{frames!r:.60}, e.g. {{1: {{5: {{'points': [[x, y]]}}}}}}"
            )
        keyframes.setdefault(int(oid), {}).update(
            {_seed_slice(z, oid, n, store.axis): Prompt.coerce(p, hw) for z, p in frames.items()}
        )
    keyframes = {oid: fr for oid, fr in keyframes.items() if fr}
    rules = StopRules(min_area, iou_threshold, stability_threshold, overlap_threshold, max_growth, min_fraction,
                      max_extent)
    if is_sam2(predictor.model):  # SAM 2: its memory carries the objects (volume.tracker), no heuristics
        return track_keyframes(store, keyframes, progress=progress, cancel=cancel)

    tracks: list[_Track] = []
    for oid, frames in keyframes.items():
        ks = sorted(frames)
        lim = n if max_distance is None else max_distance
        for i, k in enumerate(ks):
            up_end = ks[i + 1] - 1 if i + 1 < len(ks) else n - 1
            down_end = ks[i - 1] + 1 if i > 0 else 0
            if up_end > k:
                tracks.append(_Track(oid, +1, k, min(up_end, k + lim)))
            if down_end < k:
                tracks.append(_Track(oid, -1, k, max(down_end, k - lim)))
    seed_slices = sorted({z for fr in keyframes.values() for z in fr})
    up_cover = {z for t in tracks if t.step > 0 for z in range(t.start + 1, t.end + 1)}
    down_cover = {z for t in tracks if t.step < 0 for z in range(t.end, t.start)}
    total, done = len(seed_slices) + len(up_cover) + len(down_cover), 0
    seeds_done: set[int] = set()
    up_pos, down_pos = -1, n  # slices <= up_pos passed the ascending sweep, >= down_pos the descending
    results: dict[int, dict[int, tuple[Crop, float, int]]] = {}  # oid -> z -> (mask crop, score, distance)
    cancelled = False
    saved = predictor.embedding

    def report() -> None:
        if progress is not None:
            progress(done, total)

    try:
        # 1. keyframes
        for z in seed_slices:
            if is_cancelled(cancel):
                cancelled = True
                break
            predictor.set_image_embedding(store.get(z))
            groups: dict[tuple, list[tuple[int, dict]]] = {}
            for oid, frames in keyframes.items():
                if z in frames:
                    p = frames[z].to_sam()
                    single = p.get("box") is None and p.get("points") is not None and len(p["points"]) == 1
                    groups.setdefault((*_kind(p), single), []).append((oid, p))
            for key, items in groups.items():
                masks, scores, logits = _predict(predictor, [p for _, p in items], multimask=key[-1])
                for k, (oid, _) in enumerate(items):
                    given = keyframes[oid][z].mask
                    m = given if (given is not None and keep_seed_masks) else masks[k]
                    results.setdefault(oid, {})[z] = (crop_mask(m), float(scores[k]), 0)
                    for t in tracks:
                        if t.oid == oid and t.start == z:
                            t.mask, t.logits, t.largest = m, logits[k], int(m.sum())
                            if m.sum() < max(min_area, 1):
                                t.alive, t.reason = False, f"empty keyframe at slice {z}"
            seeds_done.add(z)
            done += 1
            report()
        # 2. sweeps
        for step in () if cancelled else (+1, -1):
            order = range(0, n) if step > 0 else range(n - 1, -1, -1)
            mine = [t for t in tracks if t.step == step]
            for z in order:
                active = [t for t in mine if t.alive and t.covers(z)]
                if not active:
                    if step > 0:
                        up_pos = z
                    else:
                        down_pos = z
                    continue
                if is_cancelled(cancel):
                    cancelled = True
                    break
                centres = [mask_point(t.mask) for t in active]
                prompts = []
                for k, t in enumerate(active):
                    box = mask_box(t.mask, box_margin, hw)
                    pts = [centres[k]] if "point" in use else []
                    lab = [1] * len(pts)
                    if negatives:  # other objects' deepest points inside this object's box
                        others = [c for j, c in enumerate(centres) if active[j].oid != t.oid]
                        inside = [c for c in others if box[0] <= c[0] <= box[2] and box[1] <= c[1] <= box[3]]
                        pts, lab = pts + inside, lab + [0] * len(inside)
                    p: dict = {"points": np.array(pts, np.float32).reshape(-1, 2), "labels": np.array(lab)}
                    if "box" in use:
                        p["box"] = box
                    if "mask" in use:
                        p["mask_input"] = t.logits
                    prompts.append(p)
                predictor.set_image_embedding(store.get(z))
                masks, scores, logits = _predict(predictor, prompts, multimask)
                stab = stability(logits[:, 0])
                for k, t in enumerate(active):
                    m = masks[k]
                    iou = np.logical_and(m, t.mask).sum() / max(1, np.logical_or(m, t.mask).sum())
                    d = abs(z - t.start)
                    st = Step(z, d, int(m.sum()), float(scores[k]), float(stab[k]), float(iou), t.largest)
                    t.steps.append(st)
                    reason = rules.reason(st)
                    if reason:
                        t.alive, t.reason = False, f"{reason} at slice {z}"
                        continue
                    t.mask, t.logits, t.largest = m, logits[k], max(t.largest, st.area)
                    prev = results.setdefault(t.oid, {}).get(z)
                    if prev is None or (d, -scores[k]) < (prev[2], -prev[1]):
                        results[t.oid][z] = (crop_mask(m), float(scores[k]), d)  # cropped: memory ~ objects
                if step > 0:
                    up_pos = z
                else:
                    down_pos = z
                done += 1
                report()
    finally:
        if saved is not None:
            predictor.set_image_embedding(saved)
        else:
            predictor.reset_image()

    def final(z: int) -> bool:
        return (
            (z not in seed_slices or z in seeds_done)
            and (z not in up_cover or z <= up_pos)
            and (z not in down_cover or z >= down_pos)
        )

    out = VolumeResult(shape=(n, *hw), axis=store.axis, cancelled=cancelled)
    for oid, per in results.items():
        for z, (crop, s, _) in per.items():
            if final(z) and crop[2].any():
                out.masks.setdefault(z, {})[oid] = uncrop_mask(crop, hw)
                out.scores.setdefault(z, {})[oid] = s
    for t in tracks:
        name = f"{'up' if t.step > 0 else 'down'} from {t.start}"
        out.stopped.setdefault(t.oid, {})[name] = t.reason or "end"
        out.trace.setdefault(t.oid, {})[name] = list(t.steps)
    if not cancelled and progress is not None:
        progress(total, total)
    return out
