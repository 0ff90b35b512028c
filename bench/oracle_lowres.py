"""How good can a mask be through SAM's 256x256 low-res interface? An oracle on the dsb2018 validation split.

For every ground-truth nucleus: the mask is resized like the image (longest side ``img_size``, zero
padding), area-averaged onto the 256x256 low-res grid, and ``average - 0.5`` goes through the
predictor's post-processing (bilinear up, crop, bilinear to the original size, ``> 0``). The mean IoU
with the ground truth bounds what logits of that grid shape give without any error of the network
(a trained network could do a little better with sharper logits, so it is a guide, not a proof).

    python bench/oracle_lowres.py [--img-size 512 1024]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from napari_sam.engine.postprocess import MaskUpsampler
from napari_sam.engine.transforms import ResizeLongestSide
from napari_sam.train.data import load_split, read_dsb2018_index

ROOT = Path(__file__).resolve().parents[1].parent / "shared/data/dsb2018"


def oracle_iou(labels: np.ndarray, img_size: int, upsampler: MaskUpsampler) -> list[float]:
    """Oracle IoU of every object of a (H, W) label image through the low-res grid."""
    h, w = labels.shape[:2]
    ih, iw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    out = []
    for v in np.unique(labels)[1:]:
        gt = labels == v
        g = torch.from_numpy(gt.astype(np.float32))[None, None]
        g = F.pad(F.interpolate(g, (ih, iw), mode="bilinear", align_corners=False), (0, img_size - iw, 0, img_size - ih))
        low = F.interpolate(g, (256, 256), mode="area") - 0.5
        m = upsampler(low, (ih, iw), (h, w))[0, 0].numpy()
        out.append(float((m & gt).sum() / max((m | gt).sum(), 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-size", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--data", default=str(ROOT))
    args = ap.parse_args()
    root = Path(args.data)
    rows = {r["id"]: r for r in read_dsb2018_index(root)}
    ids = load_split(root)["val"]
    print("| input side | " + " | ".join(["all", "fluorescence", "stained", "brightfield"]) + " | objects |")
    print("|---|---|---|---|---|---|")
    for s in args.img_size:
        up, per = MaskUpsampler(s), {}
        for sid in ids:
            lab = np.array(Image.open(root / "labels" / f"{sid}.png"))
            per.setdefault(rows[sid]["modality"], []).extend(oracle_iou(lab, s, up))
        every = sum(per.values(), [])
        cells = [np.mean(every)] + [np.mean(per.get(m, [np.nan])) for m in ("fluorescence", "stained", "brightfield")]
        print(f"| {s} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {len(every)} |")


if __name__ == "__main__":
    main()
