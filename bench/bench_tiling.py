"""Tiled embeddings (napari_sam.engine.tiling) vs the whole-image embedding: quality on large images, cost.

For every dsb2018 validation image larger than the model's input (20 images, 520x696 ... 1040x1388
with nano_nuclei's 512 px), the evaluation's objects (up to 10 per image, seeded as
``napari_sam.train.evaluate``): box and centre-click IoU with ``SamPredictor`` (image shrunk to the
model's input) and with ``TiledPredictor`` (tiles at the image's own scale). Then, side by side in
one process, medians of the embedding time and of one click (decoder + masks at full resolution)
for a 520x696 image, the 1040x1388 one and that one enlarged 2x (2080x2776).

    python bench/bench_tiling.py [--model nano_nuclei] [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import TiledPredictor
from napari_sam.train.data import load_split
from napari_sam.train.evaluate import evaluation_objects
from napari_sam.train.prompts import center_point, mask_box
from napari_sam.weights.loading import load_model

DSB = Path(__file__).resolve().parents[2] / "shared/data/dsb2018"
SPEED_IMAGES = [("07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5", 1),
                ("c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339", 1),
                ("c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339", 2)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def quality(plain: SamPredictor, tiled: TiledPredictor, root: Path, max_objects: int) -> None:
    rows: dict[str, list[list[float]]] = {"box": [[], []], "1-click": [[], []]}
    n_img = 0
    for j, sid in enumerate(load_split(root)["val"]):
        img = np.array(Image.open(root / "images" / f"{sid}.png"))
        if max(img.shape[:2]) <= plain.img_size:
            continue
        lab = np.array(Image.open(root / "labels" / f"{sid}.png"))
        ids = evaluation_objects(lab, max_objects, seed=j)
        if not ids.size:
            continue
        n_img += 1
        gts = [lab == i for i in ids]
        boxes = np.stack([mask_box(g) for g in gts])
        centres = np.array([center_point(g) for g in gts], np.float32)[:, None]
        for col, p in enumerate((plain, tiled)):
            p.set_image(img)
            mb, _, _ = p.predict_batch(boxes=boxes, multimask_output=False)
            mc, sc, _ = p.predict_batch(centres, np.ones((len(gts), 1)), multimask_output=True)
            best = sc.argmax(1)
            rows["box"][col] += [_iou(mb[k, 0], g) for k, g in enumerate(gts)]
            rows["1-click"][col] += [_iou(mc[k, best[k]], g) for k, g in enumerate(gts)]
    n = len(rows["box"][0])
    print(f"quality: {n_img} validation images larger than {plain.img_size} px, {n} objects (mean IoU)")
    print("| prompt | whole image (SamPredictor) | tiles (TiledPredictor) |\n|---|---|---|")
    for k, (a, b) in rows.items():
        print(f"| {k} | {np.mean(a):.3f} | {np.mean(b):.3f} |")


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def speed(plain: SamPredictor, tiled: TiledPredictor, root: Path, runs: int) -> None:
    print(f"\nspeed ({torch.get_num_threads()} threads, medians of {runs}; ms)")
    print("| image | tiles | embed whole | embed tiled | click whole | click tiled |\n|---|---|---|---|---|---|")
    for sid, k in SPEED_IMAGES:
        img = np.array(Image.open(root / "images" / f"{sid}.png"))
        img = np.repeat(np.repeat(img, k, 0), k, 1)
        lab = np.array(Image.open(root / "labels" / f"{sid}.png"))
        lab = np.repeat(np.repeat(lab, k, 0), k, 1)
        areas = np.bincount(lab.ravel())[1:]
        obj = 1 + int(np.argsort(areas)[len(areas) // 2])  # a median-sized nucleus
        pt, one = np.array([center_point(lab == obj)], np.float32), np.array([1])
        e_plain = _median_ms(lambda im=img: plain.set_image(im), runs)
        e_tiled = _median_ms(lambda im=img: tiled.set_image(im), runs)
        n_tiles = len(tiled.embedding.tiles) if tiled.is_tiled else 1
        c_plain = _median_ms(lambda p=pt, o=one: plain.predict(p, o), 3 * runs)
        c_tiled = _median_ms(lambda p=pt, o=one: tiled.predict(p, o), 3 * runs)
        print(f"| {img.shape[0]}x{img.shape[1]} | {n_tiles} + overview | {e_plain:.0f} | {e_tiled:.0f} | "
              f"{c_plain:.1f} | {c_tiled:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nano_nuclei")
    ap.add_argument("--data", default=str(DSB))
    ap.add_argument("--max-objects", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plain = SamPredictor(load_model(args.model, device="cpu"), device="cpu")
    tiled = TiledPredictor(SamPredictor(plain.model, device="cpu"))
    quality(plain, tiled, Path(args.data), args.max_objects)
    speed(plain, tiled, Path(args.data), args.runs)


if __name__ == "__main__":
    main()
