"""Propagation quality on GoNuclear 3D: one point per nucleus, carried through the stack.

Data: ``../shared/data/gonuclear3d/`` (100x100x100 uint8 confocal nuclei, 54 labelled nuclei).
Each nucleus is seeded with one positive point at its centre of mass, on its centre-of-mass slice
(rounded; when that pixel is outside the nucleus, the nucleus pixel of that slice nearest to it).
All nuclei go through one ``segment_volume`` call (one decoder call per slice and sweep direction);
the score is the Dice of each nucleus' 3D mask with its label, averaged over nuclei.

    python bench/eval_gonuclear3d.py                      # the default model (nano_nuclei)
    python bench/eval_gonuclear3d.py --model lite_medsam_nuclei --zoom 1   # + its own stop rules (registry)
    python bench/eval_gonuclear3d.py --model random       # random nano weights: mechanics only
    python bench/eval_gonuclear3d.py --sweep              # prompt kinds and thresholds, one table
    python bench/eval_gonuclear3d.py --axis 1             # propagate along y instead of z
    python bench/eval_gonuclear3d.py --compare            # old vs new defaults, spans per nucleus
    python bench/eval_gonuclear3d.py --study              # stop rules replayed on half, scored on the other

``--zoom`` sets how the 100 px slices are embedded (``fit``: enlarged 5x to the 512 input, the old
default; ``1``: own pixel scale, zero-padded; ``model``: the model's default). ``--compare`` runs the
old defaults (zoom fit, the stop rules before issue 21) and the new ones on the same clicks and prints
mean 3D Dice and, per nucleus, the true and predicted slice spans. ``--study`` runs once with every
stop rule off, records each step's measures (``VolumeResult.trace``), replays the stop rules on the
even-numbered nuclei (the tuning half) and reports the chosen rules on the odd-numbered ones (held out);
see ``bench/stop_study.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/stop_study.py
from stop_study import GRID, OFF, best, one_at_a_time, record, score  # noqa: E402

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


def spans(result, labels: np.ndarray, axis: int, seeds: dict) -> dict[int, tuple]:
    """{id: ((true first, last), (predicted first, last) or None)} in slices along ``axis``."""
    lab = np.moveaxis(labels, axis, 0)
    out = {}
    for oid in seeds:
        zs = np.nonzero((lab == oid).any(axis=(1, 2)))[0]
        pz = sorted(result.object_masks(oid))
        out[oid] = ((int(zs[0]), int(zs[-1])), (pz[0], pz[-1]) if pz else None)
    return out


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
        "dice": d3,
        "spans": spans(res, labels, axis, seeds),
    }


#: segment_volume's stop rules before issue 21, with the slices enlarged to the model's input
OLD_DEFAULTS = {"iou_threshold": 0.3, "stability_threshold": 0.0, "overlap_threshold": 0.3, "min_area": 4,
                "max_growth": None, "min_fraction": None, "max_extent": None, "max_distance": None}


def _zoom(text: str):
    """--zoom for EmbeddingStore: 'model' -> the predictor's (the model's default), 'fit' -> None."""
    return "predictor" if text == "model" else None if text == "fit" else float(text)


def _span(s) -> str:
    return "-" if s is None else f"{s[0]:3d}-{s[1]:3d}"


def compare(predictor, raw, labels, args) -> int:
    """Old defaults (zoom fit, OLD_DEFAULTS) and new ones (the model's zoom, segment_volume's defaults)
    on the same clicks: mean Dice, then per nucleus its true and predicted slice spans."""
    from napari_sam.volume.store import EmbeddingStore

    variants = [("old", "fit", OLD_DEFAULTS), ("new", "model", {})]
    rows = {}
    for path in args.load or []:  # a variant saved by an earlier --compare --only run (same clicks)
        saved = json.loads(Path(path).read_text())
        for name, row in saved.items():
            rows[name] = {**row, "spans": {int(i): tuple(tuple(x) if x else None for x in v)
                                           for i, v in row["spans"].items()},
                          "dice": {int(i): d for i, d in row["dice"].items()}}
            print(f"{name} defaults loaded from {path}: mean 3D Dice {row['mean_dice']:.3f}")
    for name, zoom, kw in variants:
        if name in rows or (args.only and name != args.only):
            continue
        store = EmbeddingStore(predictor, raw, axis=args.axis, cache_dir=args.cache_dir, zoom=_zoom(zoom))
        store.precompute()
        rows[name] = row = run(store, labels, args.axis, args.objects, **kw)
        print(f"{name} defaults (zoom {store.zoom or 'fit'}, {json.dumps(kw) or 'segment_volume defaults'}): mean 3D "
              f"Dice {row['mean_dice']:.3f} (median {row['median_dice']:.3f}; even ids "
              f"{_half(row, 0):.3f}, odd ids {_half(row, 1):.3f}), seed slice {row['seed_slice_dice']:.3f}, "
              f"{row['seconds']:.1f} s, stops {row['stops']}", flush=True)
    if len(rows) < 2:
        _save(args, rows)
        return 0
    print(f"{'id':>4} {'true':>8} | {'old span':>8} {'Dice':>5} | {'new span':>8} {'Dice':>5}")
    for oid, (true, _) in sorted(rows["old"]["spans"].items()):
        print(f"{oid:4d} {_span(true):>8} | {_span(rows['old']['spans'][oid][1]):>8} {rows['old']['dice'][oid]:5.2f} | "
              f"{_span(rows['new']['spans'][oid][1]):>8} {rows['new']['dice'][oid]:5.2f}")
    for name in rows:
        sp = rows[name]["spans"]
        n_true = np.mean([t[1] - t[0] + 1 for t, _ in sp.values()])
        n_pred = np.mean([0 if p is None else p[1] - p[0] + 1 for _, p in sp.values()])
        over = np.mean([0 if p is None else max(0, t[0] - p[0]) + max(0, p[1] - t[1]) for t, p in sp.values()])
        print(f"{name}: mean span true {n_true:.1f} slices, predicted {n_pred:.1f}, past the true ends {over:.1f}")
    _save(args, rows)
    return 0


def _save(args, rows: dict) -> None:
    if args.json:
        args.json.write_text(json.dumps({k: {**v, "spans": {str(i): s for i, s in v["spans"].items()},
                                             "dice": {str(i): d for i, d in v["dice"].items()}}
                                         for k, v in rows.items()}, indent=1, default=str))


def _half(row: dict, parity: int) -> float:
    return float(np.mean([d for oid, d in row["dice"].items() if oid % 2 == parity]))


def study(store, labels, args) -> int:
    """Stop rules replayed on the recorded tracks (bench/stop_study.py): chosen on the even ids,
    reported on the odd ids."""
    from napari_sam.volume.propagate import segment_volume

    seeds = seeds_for(labels, args.axis)
    t0 = time.perf_counter()
    # tracks recorded up to --study-distance slices from the seed (the true nuclei span ~14 slices)
    res = segment_volume(store, seeds=seeds, **{**OFF, "max_distance": args.study_distance})
    print(f"all stops off: {time.perf_counter() - t0:.1f} s", flush=True)
    rec = record(res, np.moveaxis(labels, args.axis, 0), seeds)
    if args.json:  # the recorded tracks, to replay other rules without the decoder
        with open(args.json.with_suffix(".pkl"), "wb") as f:
            pickle.dump(rec, f)
    tune = [i for i in seeds if i % 2 == 0]
    held = [i for i in seeds if i % 2 == 1]
    old = {k: v for k, v in OLD_DEFAULTS.items() if k in GRID}
    for name, kw in (("all off", {}), ("old rules", old)):
        print(f"{name:10s} tune {score(rec, tune, **kw):.3f}  held out {score(rec, held, **kw):.3f}  "
              f"all {score(rec, list(seeds), **kw):.3f}")
    print("one rule at a time, the others off (tune / held out):")
    for n, v, d in one_at_a_time(rec, tune, {}):
        print(f"  {n:20s} {v!s:6s} {d:.3f} / {score(rec, held, **{n: v}):.3f}")
    chosen, d = best(rec, tune)
    print(f"best on the tuning half: {chosen} -> tune {d:.3f}, held out {score(rec, held, **chosen):.3f}, "
          f"all {score(rec, list(seeds), **chosen):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="'default', 'random', a registry name or a .pt path")
    ap.add_argument("--axis", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="grid of prompt kinds, box margins, thresholds")
    ap.add_argument("--objects", type=int, default=0, help="only this many nuclei (evenly spaced ids)")
    ap.add_argument("--cache-dir", type=Path, help="zarr embedding cache (reused across runs)")
    ap.add_argument("--quick-sweep", action="store_true", help="prompt kinds and stop thresholds only")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--zoom", default="model", help="'model' (its default), 'fit' (enlarge to the input) or a scale")
    ap.add_argument("--compare", action="store_true", help="old vs new defaults, spans per nucleus")
    ap.add_argument("--only", choices=["old", "new"], help="with --compare: run only this variant (--json saves it)")
    ap.add_argument("--load", action="append", help="with --compare: a variant saved with --only --json")
    ap.add_argument("--study-distance", type=int, default=12, help="--study: record tracks this far")
    ap.add_argument("--study", action="store_true", help="stop rules: chosen on even ids, scored on odd ids")
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
    if args.compare:
        return compare(predictor, raw, labels, args)
    store = EmbeddingStore(predictor, raw, axis=args.axis, cache_dir=args.cache_dir, zoom=_zoom(args.zoom))
    t0 = time.perf_counter()
    store.precompute()
    print(
        f"model {args.model} ({getattr(model, 'arch', '?')}), {len(store)} slices encoded in "
        f"{time.perf_counter() - t0:.1f} s; {len(np.unique(labels)) - 1} nuclei",
        flush=True,
    )
    rows = []
    if args.study:
        return study(store, labels, args)
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
    else:  # segment_volume's defaults, and the model's own stop rules (registry) where it has them
        from napari_sam.weights.registry import volume_overrides

        own = volume_overrides(getattr(model, "model_name", None))
        configs = [{}, own] if own else [{}]
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
