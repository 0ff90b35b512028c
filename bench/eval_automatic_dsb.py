"""Quality of "segment everything" on the dsb2018 validation split, per modality.

For every validation image (``src/napari_sam/train/dsb2018_split.json``, key ``"val"``) the model's
automatic labels (``AutomaticMaskGenerator.generate_labels``) are matched one-to-one to the ground
truth nuclei (Hungarian assignment on IoU; a pair with IoU >= 0.5 is a true positive). Reported per
modality (``index.csv``): F1 at IoU 0.5 over all objects (2TP / (2TP + FP + FN)), the mean IoU of
matched pairs, the mean per-image F1, and the mean segmentation accuracy (mSA) as micro-sam and the DSB
papers report it: per image, SA(t) = TP / (TP + FP + FN) at IoU thresholds t = 0.5, 0.55, ..., 0.95,
averaged over t, then over images (published DSB automatic mSA: micro-sam AIS 0.654, APG 0.665,
Cellpose-SAM 0.656). The thresholds default to the model's own (its registry entry), as in the widget.

    python bench/eval_automatic_dsb.py                       # nano_nuclei, default parameters
    python bench/eval_automatic_dsb.py --model path.pt --points-per-side 32 --pred-iou-thresh 0.8 --limit 20
    python bench/eval_automatic_dsb.py --min-side 512 --tile-size 512   # large images, tiles at full resolution
    python bench/eval_automatic_dsb.py --model lite_medsam_nano_nuclei --tile-size 0   # no tiles (its default: 256)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/dsb2018"
SPLIT = ROOT / "src/napari_sam/train/dsb2018_split.json"


def match(gt: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> tuple[int, int, int, list[float]]:
    """(TP, FP, FN, IoUs of the matched pairs) between two (H, W) instance label images."""
    from scipy.optimize import linear_sum_assignment

    from napari_sam.automatic.stack import iou_matrix

    ids_g, ids_p, iou = iou_matrix(gt, pred)
    ious: list[float] = []
    if iou.size:
        r, c = linear_sum_assignment(-iou)
        ious = [float(v) for v in iou[r, c] if v >= thresh]
    tp = len(ious)
    return tp, len(ids_p) - tp, len(ids_g) - tp, ious


THRESHOLDS = np.arange(0.5, 0.951, 0.05)


def segmentation_accuracy(n_gt: int, n_pred: int, ious: list[float]) -> float:
    """mean over IoU thresholds 0.5..0.95 of TP / (TP + FP + FN); ``ious`` those of the one-to-one
    matches (pairs with IoU > 0.5 are unique, so counting ``ious >= t`` is the matching at t)."""
    if n_gt == 0 and n_pred == 0:
        return 1.0
    m = np.asarray(ious, float)
    tp = np.array([(m >= t).sum() for t in THRESHOLDS])
    return float(np.mean(tp / (n_gt + n_pred - tp)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano_nuclei", help="registry name or checkpoint path")
    ap.add_argument("--device", default=None)
    ap.add_argument("--split", default=str(SPLIT))
    ap.add_argument("--limit", type=int, default=0, help="only the first N validation images (0: all)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--pred-iou-thresh", type=float, default=None, help="default: the model's own (registry)")
    ap.add_argument("--stability-score-thresh", type=float, default=None, help="default: the model's own")
    ap.add_argument("--box-nms-thresh", type=float, default=None, help="default: the model's own")
    ap.add_argument("--min-mask-region-area", type=int, default=0)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile-size", type=int, default=None,
                    help="images larger than this in tiles at full resolution (0: never; default: the model's own)")
    ap.add_argument("--tile-overlap", type=int, default=128, help="with --tile-size")
    ap.add_argument("--crop-nms-thresh", type=float, default=0.7, help="box IoU for duplicates across tiles, with --tile-size")
    ap.add_argument("--zoom", default="none",
                    help="images smaller than the model's input: 'none' (resized to it, the default), 'model' (the "
                         "model's own scale), or a number")
    ap.add_argument("--min-side", type=int, default=0, help="only images whose longer side exceeds this (px)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.weights.loading import load_model
    from napari_sam.weights.registry import automatic_settings

    split = Path(args.split)
    if not split.is_file():
        sys.exit(f"split file {split} not found (written by the training step)")
    val = json.loads(split.read_text())["val"]
    if args.limit:
        val = val[: args.limit]
    with open(DATA / "index.csv") as f:
        modality = {row["id"]: row["modality"] for row in csv.DictReader(f)}
    model = load_model(args.model, device=args.device)
    params = {
        "points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh, "box_nms_thresh": args.box_nms_thresh,
        "min_mask_region_area": args.min_mask_region_area, "crop_n_layers": args.crop_n_layers,
    }
    if args.tile_size is not None:  # else the model's own (registry), as in the widget
        params.update(tile_size=args.tile_size or None, tile_overlap=args.tile_overlap,
                      crop_nms_thresh=args.crop_nms_thresh)
    params = automatic_settings(args.model, params)
    zoom = "predictor" if args.zoom == "model" else None if args.zoom == "none" else float(args.zoom)
    gen = AutomaticMaskGenerator(SamPredictor(model), **params, zoom=zoom)
    print(f"# model {args.model}, {len(val)} validation images, {vars(args)}, generator {params}")
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    t0 = time.perf_counter()
    for k, image_id in enumerate(val, 1):
        image = np.array(Image.open(DATA / "images" / f"{image_id}.png"))
        if max(image.shape[:2]) <= args.min_side:
            continue
        gt = np.array(Image.open(DATA / "labels" / f"{image_id}.png")).astype(np.int64)
        pred = gen.generate_labels(image)
        tp, fp, fn, ious = match(gt, pred)
        s = stats[modality[image_id]]
        s["tp"].append(tp), s["fp"].append(fp), s["fn"].append(fn), s["ious"].extend(ious)
        s["f1"].append(2 * tp / max(2 * tp + fp + fn, 1))
        s["sa"].append(segmentation_accuracy(tp + fn, tp + fp, ious))
        print(f"{k:3d}/{len(val)} {image_id[:10]} {modality[image_id]:12s} gt {tp + fn:3d} pred {tp + fp:3d} "
              f"tp {tp:3d} F1 {s['f1'][-1]:.3f} mSA {s['sa'][-1]:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nmodality       images  objects  F1@0.5  mean matched IoU  mean image F1    mSA")
    for mod, s in sorted(stats.items()) + [("all", _merge(stats))]:
        tp, fp, fn = sum(s["tp"]), sum(s["fp"]), sum(s["fn"])
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        miou = float(np.mean(s["ious"])) if s["ious"] else float("nan")
        print(f"{mod:14s} {len(s['f1']):6d} {tp + fn:8d}  {f1:6.3f}  {miou:16.3f}  {np.mean(s['f1']):13.3f}"
              f"  {np.mean(s['sa']):.3f}")


def _merge(stats: dict) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for s in stats.values():
        for k, v in s.items():
            out[k].extend(v)
    return out


if __name__ == "__main__":
    main()
