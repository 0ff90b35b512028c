"""Corrective clicks with and without the previous mask: SAM's protocol (the widget's) vs points only.

The evaluation's simulated clicks on the dsb2018 validation split (``napari_sam.train.evaluate``:
centre click, then a click in the largest error region each round) decoded two ways:

- ``mask_input``: all clicks so far plus the previous low-res logits, one mask (SAM's interactive
  protocol, the evaluation's default and what the widget does since it refines);
- ``points only``: all clicks so far, three candidates, the best predicted IoU kept (the widget
  before it refined).

    python bench/eval_refinement.py [--model nano_nuclei] [--limit 72]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_sam import SamPredictor, load_model
from napari_sam.train import evaluate as ev
from napari_sam.train.data import load_split

ROOT = Path(__file__).resolve().parents[1].parent / "shared/data/dsb2018"


def _points_only(predict_batch):
    """``predict_batch`` whose corrective rounds (those given ``mask_input``) drop the mask and keep
    the best of three candidates instead."""

    def wrapped(*args, **kw):
        if kw.get("mask_input") is None:
            return predict_batch(*args, **kw)
        kw.pop("mask_input")
        kw["multimask_output"] = True
        m, s, low = predict_batch(*args, **kw)
        pick = (np.arange(len(m)), s.argmax(1))
        return m[pick][:, None], s[pick][:, None], low[pick][:, None]

    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nano_nuclei")
    ap.add_argument("--limit", type=int, default=0, help="first N validation images (0: all 72)")
    ap.add_argument("--data", default=str(ROOT))
    args = ap.parse_args()
    root = Path(args.data)
    ids = load_split(root)["val"]
    ids = ids[: args.limit] if args.limit else ids
    pred = SamPredictor(load_model(args.model, device="cpu"), device="cpu")
    plain = pred.predict_batch
    print(f"| protocol | 1-click | 3-click | 5-click | objects |  ({args.model}, {len(ids)} images)")
    print("|---|---|---|---|---|")
    for name, fn in (("mask_input, one mask", plain), ("points only, best of 3", _points_only(plain))):
        pred.predict_batch = fn
        acc: dict[str, list[float]] = {"point": [], "click3": [], "click5": []}
        with torch.inference_mode():
            for j, sid in enumerate(ids):
                im = np.array(Image.open(root / "images" / f"{sid}.png"))
                lb = np.array(Image.open(root / "labels" / f"{sid}.png"))
                r = ev.evaluate_image(pred, im, lb, max_objects=10, clicks=5, seed=j)
                for k in acc:
                    acc[k] += r[k]
        m = {k: float(np.mean(v)) for k, v in acc.items()}
        print(f"| {name} | {m['point']:.3f} | {m['click3']:.3f} | {m['click5']:.3f} | {len(acc['point'])} |")


if __name__ == "__main__":
    main()
