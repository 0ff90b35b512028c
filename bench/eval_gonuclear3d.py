"""Propagation quality on GoNuclear 3D: one point per nucleus, carried through the stack.

Data: ``../shared/data/gonuclear3d/`` (100x100x100 uint8 confocal nuclei, 54 labelled nuclei).
Each nucleus is seeded with one positive point at its centre of mass, on its centre-of-mass slice
(rounded; when that pixel is outside the nucleus, the nucleus pixel of that slice nearest to it).
All nuclei go through one ``segment_volume`` call (one decoder call per slice and sweep direction);
the score is the Dice of each nucleus' 3D mask with its label, averaged over nuclei.

    python bench/eval_gonuclear3d.py                      # the default model (nano_nuclei)
    python bench/eval_gonuclear3d.py --model random       # random nano weights: mechanics only
    python bench/eval_gonuclear3d.py --sweep              # prompt kinds and thresholds, one table
    python bench/eval_gonuclear3d.py --axis 1             # propagate along y instead of z
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gonuclear3d"


def load_model(name: str):
    if name == "random":
        from napari_sam.models.sam import build_model

        torch.manual_seed(0)
        return build_model("nano")
    from napari_sam.weights.loading import load_model as _load

    return _load(None if name == "default" else name)


def seeds_for(labels: np.ndarray, axis: int = 0) -> dict[int, dict[int, dict]]:
    """{id: {slice: {points: [[x, y]]}}} at each nucleus' centre of mass (slices along ``axis``)."""
    lab = np.moveaxis(labels, axis, 0)
    ids = [int(i) for i in np.unique(lab) if i]
    seeds = {}
    for oid, com in zip(ids, ndimage.center_of_mass(np.ones_like(lab), lab, ids), strict=True):
        z, y, x = (int(round(c)) for c in com)
        sl = lab[z] == oid
        if not sl.any():
            z = int(np.argmax((lab == oid).sum(axis=(1, 2))))
            sl = lab[z] == oid
        if not sl[y, x]:
            ys, xs = np.nonzero(sl)
            k = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
            y, x = int(ys[k]), int(xs[k])
        seeds[oid] = {z: {"points": [[x, y]]}}
    return seeds


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def dice_per_object(result, labels: np.ndarray, axis: int, seeds: dict) -> tuple[dict, dict]:
    """{id: 3D Dice} and {id: Dice on the seed slice only} (the decoder alone, no propagation)."""
    lab = np.moveaxis(labels, axis, 0)
    d3, d2 = {}, {}
    for oid, frames in seeds.items():
        gt = lab == oid
        pred = np.zeros_like(gt)
        for z, m in result.object_masks(oid).items():
            pred[z] = m
        d3[oid] = _dice(gt, pred)
        z = next(iter(frames))
        d2[oid] = _dice(gt[z], pred[z])
    return d3, d2


def run(store, labels, axis, n_objects=None, **kw) -> dict:
    from napari_sam.volume.propagate import segment_volume

    seeds = seeds_for(labels, axis)
    if n_objects:  # evenly spaced ids: a fixed subset for quick sweeps
        ids = sorted(seeds)
        seeds = {ids[int(i)]: seeds[ids[int(i)]] for i in np.linspace(0, len(ids) - 1, n_objects)}
    t0 = time.perf_counter()
    res = segment_volume(store, seeds=seeds, **kw)
    dt = time.perf_counter() - t0
    d3, d2 = dice_per_object(res, labels, axis, seeds)
    reasons = [r.split(" at ")[0] for per in res.stopped.values() for r in per.values()]
    return {
        "params": kw,
        "objects": len(seeds),
        "mean_dice": float(np.mean(list(d3.values()))),
        "median_dice": float(np.median(list(d3.values()))),
        "seed_slice_dice": float(np.mean(list(d2.values()))),
        "seconds": round(dt, 2),
        "stops": {k: reasons.count(k) for k in sorted(set(reasons))},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="'default', 'random', a registry name or a .pt path")
    ap.add_argument("--axis", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="grid of prompt kinds, box margins, thresholds")
    ap.add_argument("--objects", type=int, default=0, help="only this many nuclei (evenly spaced ids)")
    ap.add_argument("--cache-dir", type=Path, help="zarr embedding cache (reused across runs)")
    ap.add_argument("--quick-sweep", action="store_true", help="prompt kinds and stop thresholds only")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"no data at {DATA}", file=sys.stderr)
        return 1
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.volume.store import EmbeddingStore

    torch.set_num_threads(2)
    raw = tifffile.imread(DATA / "1135_mini_raw.tif")
    labels = tifffile.imread(DATA / "1135_mini_labels.tif").astype(np.int32)
    model = load_model(args.model)
    predictor = SamPredictor(model)
    store = EmbeddingStore(predictor, raw, axis=args.axis, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    store.precompute()
    print(
        f"model {args.model} ({getattr(model, 'arch', '?')}), {len(store)} slices encoded in "
        f"{time.perf_counter() - t0:.1f} s; {len(np.unique(labels)) - 1} nuclei",
        flush=True,
    )
    rows = []
    if args.quick_sweep:  # most telling first: partial output is still useful
        configs = [
            {},
            *({"prompt": p} for p in ["box+point", "box+mask", "box", "point+mask"]),
            {"negatives": True},
            *({"overlap_threshold": t} for t in [0.0, 0.5]),
            *({"iou_threshold": t} for t in [0.0, 0.3, 0.7]),
            {"iou_threshold": 0.0, "stability_threshold": 0.7},
            {"iou_threshold": 0.0, "multimask": True},
            {"iou_threshold": 0.0, "negatives": True},
            *({"box_margin": m} for m in [0.0, 0.25]),
        ]
    elif args.sweep:
        grid = itertools.chain(
            (
                {"prompt": p}
                for p in ["box", "point", "box+point", "box+mask", "point+mask", "box+point+mask"]
            ),
            ({"box_margin": m} for m in [0.0, 0.2, 0.4]),
            ({"overlap_threshold": t} for t in [0.0, 0.1, 0.2, 0.4, 0.5]),
            ({"iou_threshold": t} for t in [0.0, 0.3, 0.6, 0.7, 0.8]),
            ({"stability_threshold": t} for t in [0.5, 0.7, 0.85]),
            ({"multimask": True}, {"negatives": True}),
        )
        configs = [{}, *grid]
    else:
        configs = [{}]
    for kw in configs:
        row = run(store, labels, args.axis, args.objects, **kw)
        rows.append(row)
        print(
            f"{json.dumps(kw) or 'defaults':40s} mean Dice {row['mean_dice']:.3f}  median "
            f"{row['median_dice']:.3f}  seed slice {row['seed_slice_dice']:.3f}  {row['seconds']:6.1f} s  stops {row['stops']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "axis": args.axis, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
