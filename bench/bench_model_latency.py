"""Encoder latency of registry models on this machine, side by side in one process.

Per model: one encoder forward at its own input (``encoder_latency``), and the time to embed a
512 x 512 and a 1024 x 1024 image as a user's image is embedded: whole (``SamPredictor``: resized to
the model's input) and in tiles at full resolution (``TiledPredictor``: tiles + overview), with the
number of encoder runs; the weights' file size. Models run interleaved, median of ``--repeats``.

    python bench/bench_model_latency.py --models nano_nuclei,lite_medsam_nuclei --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import TiledPredictor
from napari_sam.train.evaluate import encoder_latency
from napari_sam.weights import download, load_model
from napari_sam.weights.registry import get_model_info


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="nano_nuclei,lite_medsam_nuclei")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = a.models.split(",")
    sizes = [int(s) for s in a.sizes.split(",")]
    models = {n: load_model(n, device="cpu") for n in names}
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 255, (s, s), dtype=np.uint8) for s in sizes}
    print(f"threads {a.threads}, load average at start {os.getloadavg()[0]:.1f}")
    rows = {n: {} for n in names}
    for m in models.values():  # warm-up
        encoder_latency(m, m.image_encoder.img_size, repeats=1)
    for n, m in models.items():
        rows[n]["input"] = m.image_encoder.img_size
        rows[n]["encoder"] = encoder_latency(m, m.image_encoder.img_size, repeats=a.repeats)
    for s in sizes:
        for n, m in models.items():
            plain, tiled = SamPredictor(m), TiledPredictor(m)
            rows[n][f"whole {s}"] = _median_time(lambda p=plain, s=s: p.compute_embedding(images[s]), a.repeats)
            rows[n][f"tiles {s}"] = _median_time(lambda p=tiled, s=s: p.compute_embedding(images[s]), a.repeats)
            rows[n][f"runs {s}"] = tiled.encodings(images[s].shape)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    head = ["model", "input", "encoder (1 run)"] + [f"{s}x{s} whole / tiles (runs)" for s in sizes] + ["file"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n, r in rows.items():
        info = get_model_info(n)
        files = [download.model_path(n)] + ([download.model_path(info.base)] if info.base else [])
        size = " + ".join(f"{p.stat().st_size / 1e6:.1f} MB" for p in files)
        cells = [n, str(r["input"]), f"{r['encoder']:.3f} s"]
        cells += [f"{r[f'whole {s}']:.3f} s / {r[f'tiles {s}']:.2f} s ({r[f'runs {s}']})" for s in sizes]
        print("| " + " | ".join(cells + [size]) + " |")


if __name__ == "__main__":
    main()
