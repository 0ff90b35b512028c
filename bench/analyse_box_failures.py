"""Where a model's box prompts miss on the dsb2018 validation split (docs/training.md).

For up to 10 seeded nuclei per validation image (the evaluation's objects), the tight box, one mask:
mean IoU when the logits are thresholded at -3 ... 2 instead of 0 (is the threshold calibrated?),
the share of failures (IoU < 0.5), the mean IoU by how much the image is shrunk to the model's
input (long side / img_size), and the images with the lowest mean IoU. With ``--native-crops``, objects
of images larger than the model's input are also segmented in an ``img_size`` x ``img_size`` crop
around their box at the image's own resolution (what tiled embeddings would give them).

    python bench/analyse_box_failures.py [--model nano_nuclei] [--native-crops]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_sam.engine.predictor import SamPredictor
from napari_sam.train.data import load_split, read_dsb2018_index
from napari_sam.train.evaluate import evaluation_objects
from napari_sam.train.prompts import mask_box
from napari_sam.weights.loading import load_model

DATA = Path(__file__).resolve().parents[2] / "shared/data/dsb2018"
THRESHOLDS = np.array([-3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2])
AT_ZERO = 5  # THRESHOLDS[AT_ZERO] == 0, the model's threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nano_nuclei")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--max-objects", type=int, default=10)
    ap.add_argument("--native-crops", action="store_true", help="also segment shrunk images' objects in native crops")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(args.data)
    rows = {r["id"]: r for r in read_dsb2018_index(root)}
    predictor = SamPredictor(load_model(args.model))
    img_size = predictor.img_size
    per_thr, shrink, per_image, native = [], [], defaultdict(list), []
    for j, sid in enumerate(load_split(root)["val"]):
        img = np.array(Image.open(root / "images" / f"{sid}.png"))
        lab = np.array(Image.open(root / "labels" / f"{sid}.png"))
        ids = evaluation_objects(lab, args.max_objects, seed=j)  # as evaluate_model: seed 0 + image index
        if not ids.size:
            continue
        predictor.set_image(img)
        gts = [lab == i for i in ids]
        logits, _, _ = predictor.predict_batch(
            boxes=np.stack([mask_box(g) for g in gts]), multimask_output=False, return_logits=True
        )
        for k, g in enumerate(gts):
            ious = [((logits[k, 0] > t) & g).sum() / max(1, ((logits[k, 0] > t) | g).sum()) for t in THRESHOLDS]
            per_thr.append(ious)
            shrink.append(max(img.shape[:2]) / img_size)
            per_image[(sid, rows[sid]["modality"], img.shape[:2])].append(ious[AT_ZERO])
            if args.native_crops and max(img.shape[:2]) > img_size:  # (the logits above are already made)
                native.append((ious[AT_ZERO], _native_crop_iou(predictor, img, g)))
    iou_t = np.array(per_thr)
    iou = iou_t[:, AT_ZERO]
    shrink_a = np.array(shrink)
    print(f"{args.model}: {len(iou)} objects, box mean IoU {iou.mean():.3f}")
    print("threshold  " + " ".join(f"{t:6.1f}" for t in THRESHOLDS))
    print("mean IoU   " + " ".join(f"{v:6.3f}" for v in iou_t.mean(0)))
    bad = iou < 0.5
    print(f"IoU < 0.5: {bad.sum()} objects ({bad.mean():.1%}); mean IoU of the others {iou[~bad].mean():.3f}")
    for name, sel in [
        ("not shrunk (long side <= img_size)", shrink_a <= 1),
        ("shrunk up to 1.5x", (shrink_a > 1) & (shrink_a <= 1.5)),
        ("shrunk more than 1.5x", shrink_a > 1.5),
    ]:
        if sel.any():
            print(f"{name}: {sel.sum()} objects, mean IoU {iou[sel].mean():.3f}")
    if native:
        a = np.array(native)
        print(f"objects of images larger than {img_size}: {len(a)}, box IoU on the whole image {a[:, 0].mean():.3f}, "
              f"in a native-resolution {img_size}x{img_size} crop {a[:, 1].mean():.3f}")
    print("lowest images (id, modality, shape, objects, mean IoU):")
    for (sid, mod, shape), v in sorted(per_image.items(), key=lambda kv: np.mean(kv[1]))[:5]:
        print(f"  {sid[:12]} {mod:<12} {shape} {len(v):3d} {np.mean(v):.3f}")


def _native_crop_iou(predictor: SamPredictor, img: np.ndarray, gt: np.ndarray) -> float:
    """Box IoU of ``gt (H, W)`` when the model sees an img_size square of ``img`` around it, unscaled."""
    s = predictor.img_size
    ys, xs = np.nonzero(gt)
    y0 = int(np.clip((ys.min() + ys.max()) // 2 - s // 2, 0, max(0, img.shape[0] - s)))
    x0 = int(np.clip((xs.min() + xs.max()) // 2 - s // 2, 0, max(0, img.shape[1] - s)))
    crop, g = img[y0 : y0 + s, x0 : x0 + s], gt[y0 : y0 + s, x0 : x0 + s]
    predictor.set_image(crop)
    m, _, _ = predictor.predict(box=mask_box(g), multimask_output=False)
    return float((m[0] & g).sum() / max(1, (m[0] | g).sum()))


if __name__ == "__main__":
    main()
