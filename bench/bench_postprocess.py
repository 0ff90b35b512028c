"""Mask post-processing (low-res logits -> bool masks at the image size): ours vs the official.

Real masks: three low-res outputs of the built-in ``nano_nuclei`` for one click on a dsb2018 image
(random weights give noise, for which our tile shortcut steps aside and both do the plain
interpolation, see ``bench/bench_engine.py``). The same logits go through the official
``Sam.postprocess_masks`` (+ ``> 0``) and through ours, for several image sizes; runs interleaved,
medians, pixel agreement printed.

    python bench/bench_postprocess.py [--threads 2] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
IMAGE = ROOT.parent / "shared/data/dsb2018/images/07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from _reference import official
    from PIL import Image

    from napari_sam import SamPredictor, load_model

    sa = official()
    pred = SamPredictor(load_model("nano_nuclei", device="cpu"), device="cpu")
    img = np.array(Image.open(IMAGE).convert("RGB"))
    pred.set_image(img)
    _, _, low = pred.predict(np.array([[200, 150]]), np.array([1]))
    low = torch.from_numpy(low)[None]  # (1, 3, 256, 256)
    s = pred.img_size
    ref_self = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=s))
    print(f"torch {torch.__version__}, threads {args.threads}, nano_nuclei logits of one click, img_size {s}")
    print(f"| {'image size':>11} | {'ours ms':>8} | {'official ms':>11} | {'speed-up':>8} | agreement |")
    print(f"|{'-' * 13}|{'-' * 10}|{'-' * 13}|{'-' * 10}|-----------|")
    for size in [(1024, 1024), (2048, 1536), (4096, 4096), (1000, 750)]:
        input_size = pred.transform.get_preprocess_shape(*size, s)
        with torch.inference_mode():
            fns = {
                "ours": lambda i=input_size, o=size: pred.postprocess_masks(low, i, o),
                "official": lambda i=input_size, o=size: sa.modeling.Sam.postprocess_masks(ref_self, low, i, o) > 0,
            }
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.runs):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
            agree = (fns["ours"]() == fns["official"]()).float().mean().item()
        o, r = statistics.median(times["ours"]), statistics.median(times["official"])
        print(f"| {size[0]:>5}x{size[1]:<5} | {o * 1e3:8.1f} | {r * 1e3:11.1f} | {r / o:7.2f}x | {agree:.6f} |")


if __name__ == "__main__":
    main()
