"""Interactive-segmentation metrics for ANY registry model, through :class:`napari_sam.engine.predictor.SamPredictor`.

Per object (ground-truth instance), on the original image resolution exactly as a user would prompt:

- ``point``: IoU after one positive click at the object centre (the pixel farthest from the
  background), ``multimask_output=True`` and the mask with the highest predicted IoU (SAM's default);
  ``point_single``: the same click with ``multimask_output=False``.
- ``box``: IoU from the tight ground-truth box, one mask; ``box_multi``: 3 masks, the best-scored
  (what the widget does by default).
- ``click3`` / ``click5``: IoU after 3 / 5 clicks in all (the centre click, then corrective clicks at
  the error pixel farthest from the error boundary: positive in a missed region, negative in a false
  one), each round with all clicks so far and the previous low-res logits as ``mask_input``.
- ``noc85`` / ``noc90``: clicks needed to reach IoU 0.85 / 0.90 (``clicks`` when never reached).

Results are means over objects, per modality (dsb2018's index) and over all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..engine.predictor import SamPredictor
from ..engine.progress import Cancel, Progress, is_cancelled
from ..engine.tiling import TiledPredictor
from ..weights.loading import load_model
from .data import load_split, read_dsb2018_index, read_pairs
from .prompts import center_point, corrective_point, mask_box

METRICS = ("point", "point_single", "box", "box_multi", "click3", "click5", "noc85", "noc90")


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def evaluation_objects(labels: np.ndarray, max_objects: int = 20, min_area: int = 10,
                       seed: int = 0) -> np.ndarray:
    """The label ids of ``labels (H, W)`` that the evaluation prompts: objects of at least
    ``min_area`` pixels, at most ``max_objects`` of them drawn with ``seed``."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_area]
    if ids.size > max_objects:
        ids = np.random.default_rng(seed).choice(ids, max_objects, replace=False)
    return ids


def evaluate_image(predictor, image: np.ndarray, labels: np.ndarray, max_objects: int = 20,
                   clicks: int = 10, min_area: int = 10, seed: int = 0) -> dict[str, list[float]]:
    """Per-object metrics (lists, one entry per object) for one image ((H,W[,C])) and its (H,W) labels."""
    ids = evaluation_objects(labels, max_objects, min_area, seed)
    out: dict[str, list[float]] = {k: [] for k in METRICS}
    if ids.size == 0:
        return out
    predictor.set_image(image)
    gts = [labels == i for i in ids]
    n = len(gts)
    centres = np.array([center_point(g) for g in gts], np.float32)[:, None]  # (n, 1, 2) xy
    ones = np.ones((n, 1), np.float32)
    m1, s1, low1 = predictor.predict_batch(centres, ones, multimask_output=True)
    best = s1.argmax(1)
    masks = m1[np.arange(n), best]
    low = low1[np.arange(n), best][:, None]
    ms, _, _ = predictor.predict_batch(centres, ones, multimask_output=False)
    boxes = np.stack([mask_box(g) for g in gts])
    mb, _, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
    mb3, sb3, _ = predictor.predict_batch(boxes=boxes, multimask_output=True)
    mb3 = mb3[np.arange(n), sb3.argmax(1)]
    hist = np.zeros((n, clicks), np.float32)
    hist[:, 0] = [_iou(masks[k], gts[k]) for k in range(n)]
    pts, lbl = centres, ones
    for c in range(1, clicks):
        new = []
        for k in range(n):
            p = corrective_point(masks[k], gts[k])
            new.append((0.0, 0.0, -1.0) if p is None else p)
        new_a = np.array(new, np.float32)
        pts = np.concatenate([pts, new_a[:, None, :2]], 1)
        lbl = np.concatenate([lbl, new_a[:, None, 2]], 1)
        mc, _, lowc = predictor.predict_batch(pts, lbl, mask_input=low, multimask_output=False)
        masks, low = mc[:, 0], lowc
        hist[:, c] = [_iou(masks[k], gts[k]) for k in range(n)]
    for k in range(n):
        out["point"].append(_iou(m1[k, best[k]], gts[k]))
        out["point_single"].append(_iou(ms[k, 0], gts[k]))
        out["box"].append(_iou(mb[k, 0], gts[k]))
        out["box_multi"].append(_iou(mb3[k], gts[k]))
        out["click3"].append(float(hist[k, min(2, clicks - 1)]))
        out["click5"].append(float(hist[k, min(4, clicks - 1)]))
        for thr, key in ((0.85, "noc85"), (0.90, "noc90")):
            hit = np.flatnonzero(hist[k] >= thr)
            out[key].append(float(hit[0] + 1) if hit.size else float(clicks))
    return out


def stratified_subset(ids: list[str], modality: dict[str, str], n: int, seed: int = 0) -> list[str]:
    """A fixed seeded subset of about ``n`` of ``ids``: each modality in proportion to its share, at
    least 2 of each (all when it has fewer), sorted. For models too slow for the whole split."""
    by_mod: dict[str, list[str]] = {}
    for i in sorted(ids):
        by_mod.setdefault(modality[i], []).append(i)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for mod in sorted(by_mod):
        group = by_mod[mod]
        k = min(len(group), max(2, round(n * len(group) / len(ids))))
        out += [group[j] for j in rng.choice(len(group), k, replace=False)]
    return sorted(out)


def _summary(per: dict[str, list[float]]) -> dict[str, float]:
    res = {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()}
    res["objects"] = len(per["point"])
    return res


def evaluate_model(model=None, **kwargs) -> dict:
    """Evaluate ``model`` (a Sam, a registry name, a checkpoint path, or None = the default model):
    :func:`evaluate_models` of one model, same arguments and result."""
    return evaluate_models([model], **kwargs)[0]


class _Embedded:
    """A predictor whose image embedding is already set: ``set_image`` keeps it (shared embeddings)."""

    def __init__(self, predictor) -> None:
        self._p = predictor

    def set_image(self, image: np.ndarray) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._p, name)


def _same_encoder(a: SamPredictor, b: SamPredictor) -> bool:
    """True when ``a`` and ``b`` embed every image alike: same encoder weights, input and preprocessing."""
    ma, mb = a.model, b.model
    pa, pb = getattr(ma, "preprocessing", None), getattr(mb, "preprocessing", None)
    if (type(ma.image_encoder) is not type(mb.image_encoder) or a.img_size != b.img_size or a.zoom != b.zoom
            or getattr(pa, "resize", None) != getattr(pb, "resize", None)
            or getattr(pa, "normalize", None) != getattr(pb, "normalize", None)):
        return False  # (the model's own zoom only sets the predictor's default: a.zoom is what counts)
    sa, sb = ma.image_encoder.state_dict(), mb.image_encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def evaluate_models(
    models: list,
    data_root: str | Path | None = None,
    images=None,
    labels=None,
    ids: list[str] | None = None,
    device: str | torch.device | None = None,
    max_objects: int = 20,
    clicks: int = 10,
    limit: int = 0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    progress: Progress = None,
    cancel: Cancel = None,
    tiled: bool = False,
    zoom: float | None | str = "model",
    subset: int = 0,
) -> list[dict]:
    """Evaluate each of ``models`` (Sams, registry names, checkpoint paths, None = the default model)
    on the same objects and prompts; models whose encoders embed alike (same weights, input and
    preprocessing: a fine-tuned decoder on a frozen encoder) share one embedding per image.

    Data: ``images`` + ``labels`` (folders, tif stacks or lists of arrays, see
    :func:`.data.read_pairs`), else dsb2018 at ``data_root`` restricted to ``ids`` (default: the
    packaged validation split). Returns per model ``{"by_modality": {modality: {metric: mean}},
    "all": {...}, "seconds": float, "seconds_per_image": mean time per image (embedding included
    for the model that computed it)}``. ``tiled``: images larger than the model's input are
    segmented at their own resolution (:class:`napari_sam.engine.tiling.TiledPredictor`).
    ``zoom``: how images smaller than the model's input are embedded (``SamPredictor``'s ``zoom``).
    ``subset``: > 0, dsb2018 only: a fixed seeded stratified subset of about this many images
    (:func:`stratified_subset`, seed 0), the same for every model.
    """
    predictors, owner = [], []
    for model in models:
        if model is None or isinstance(model, (str, Path)):
            model = load_model(model, device=device)
        p = SamPredictor(model, device=device, zoom=zoom)
        owner.append(next((k for k, q in enumerate(predictors) if owner[k] == k and _same_encoder(q, p)),
                          len(predictors)))
        predictors.append(p)
    wrapped = [TiledPredictor(p) if tiled else p for p in predictors]
    if images is not None:
        pairs = [(sid, im, lb, "custom") for sid, im, lb in read_pairs(images, labels)]
    else:
        from PIL import Image

        root = Path(data_root if data_root is not None else "../shared/data/dsb2018")
        rows = {r["id"]: r for r in read_dsb2018_index(root)}
        ids = ids if ids is not None else load_split(root)["val"]
        if subset:
            ids = stratified_subset(ids, {i: r["modality"] for i, r in rows.items()}, subset)
        pairs = [(i, None, None, rows[i]["modality"]) for i in ids]
    if limit:
        pairs = pairs[:limit]
    per_mod: list[dict[str, dict[str, list[float]]]] = [{} for _ in models]
    t0, img_t = time.time(), [[] for _ in models]
    with torch.inference_mode():
        for j, (sid, im, lb, mod) in enumerate(pairs):
            if is_cancelled(cancel):
                break
            if im is None:
                im = np.array(Image.open(root / "images" / f"{sid}.png"))
                lb = np.array(Image.open(root / "labels" / f"{sid}.png"))
            embeddings = {}
            for k, pred in enumerate(wrapped):
                te = time.time()
                if owner[k] != k:
                    pred.set_image_embedding(embeddings[owner[k]])
                    pred = _Embedded(pred)
                elif k in owner[k + 1:]:
                    embeddings[k] = pred.compute_embedding(im)
                    pred.set_image_embedding(embeddings[k])
                    pred = _Embedded(pred)
                r = evaluate_image(pred, im, lb, max_objects, clicks, seed=seed + j)
                img_t[k].append(time.time() - te)
                acc = per_mod[k].setdefault(mod, {m: [] for m in METRICS})
                for m in METRICS:
                    acc[m] += r[m]
            if progress is not None:
                progress(j + 1, len(pairs))
            if log is not None and (j + 1) % 10 == 0:
                log(f"evaluated {j + 1}/{len(pairs)} images ({time.time() - t0:.0f} s)")
    out = []
    for k in range(len(models)):
        everything = {m: sum((v[m] for v in per_mod[k].values()), []) for m in METRICS}
        out.append({"by_modality": {m: _summary(v) for m, v in sorted(per_mod[k].items())},
                    "all": _summary(everything), "seconds": time.time() - t0, "images": len(pairs),
                    "max_objects": max_objects, "clicks": clicks, "shares_embeddings_with": owner[k],
                    "seconds_per_image": float(np.mean(img_t[k])) if img_t[k] else float("nan")})
    return out


def format_table(res: dict) -> str:
    """A markdown table of :func:`evaluate_model` results."""
    head = ("| modality | objects | 1-click | 1-click (1 mask) | box | box (best of 3) | 3-click | 5-click "
            "| NoC@85 | NoC@90 |")
    lines = [head, "|" + "---|" * 10]
    rows = list(res["by_modality"].items()) + [("all", res["all"])]
    for name, r in rows:
        lines.append(f"| {name} | {r['objects']} | {r['point']:.3f} | {r['point_single']:.3f} | {r['box']:.3f} | {r['box_multi']:.3f} | "
                     f"{r['click3']:.3f} | {r['click5']:.3f} | {r['noc85']:.2f} | {r['noc90']:.2f} |")
    return "\n".join(lines)


def encoder_latency(model: torch.nn.Module, size: int, repeats: int = 3) -> float:
    """Median seconds of one image-encoder forward on a (1, 3, size, size) input, on the model's device."""
    dev = next(model.parameters()).device
    x = torch.randn(1, 3, size, size, device=dev)
    times = []
    with torch.inference_mode():
        model.image_encoder(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model.image_encoder(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times))
