"""Batch throughput: images per second of ``segment_batch`` in this process and on a LocalCluster of 1 and 2
workers, against the plain loop (load the model, then read, segment, write each image), side by side.

The cluster figures include everything a user waits for: starting the cluster, each worker importing
torch and loading the model once, the tasks, closing the cluster. Same model, parameters and images in
every run (DSB2018, the first ``--n`` fluorescence images of ``index.csv``); the labels of every run are
checked to be identical to the plain loop's. Besides the wall time, the CPU seconds of each run (this
process and its worker processes, ``getrusage``): on a machine shared with other jobs the wall time
follows the neighbours, the CPU time much less. The load average is printed before and after.

    python bench/bench_batch.py                # 20 images, points_per_side 16
    python bench/bench_batch.py --n 50 --points-per-side 32 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared/data/dsb2018"


def images(n: int) -> list[Path]:
    with open(DSB / "index.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f) if r["modality"] == "fluorescence"]
    return [DSB / "images" / f"{i}.png" for i in ids[:n]]


def plain_loop(paths: list[Path], out: Path, model: str, params: dict) -> None:
    from skimage import io

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.weights.loading import load_model
    from napari_sam.weights.registry import automatic_params

    gen = AutomaticMaskGenerator(load_model(model), **automatic_params(model), **params)
    out.mkdir(parents=True)
    for p in paths:
        labels = gen.generate_labels(np.asarray(io.imread(p)), progress=None)
        tifffile.imwrite(out / f"{p.stem}_labels.tif", labels.astype(np.uint16), compression="zlib")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (reaped) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of ``fn(*args, **kwargs)``."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--model", default="nano_nuclei")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    import torch

    from napari_sam.batch import segment_batch

    paths, params = images(args.n), {"points_per_side": args.points_per_side}
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        listing = tmp / "images.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        load0 = os.getloadavg()
        wall, cpu, _ = timed(plain_loop, paths, tmp / "plain", args.model, params)
        rows = [("plain loop (1 process)", wall, cpu)]
        for w in args.workers:
            wall, cpu, report = timed(segment_batch, listing, tmp / f"w{w}", model=args.model, workers=w, params=params)
            assert report.ok, report.describe()
            for p in paths:
                a = tifffile.imread(tmp / "plain" / f"{p.stem}_labels.tif")
                b = tifffile.imread(tmp / f"w{w}" / f"{p.stem}_labels.tif")
                assert np.array_equal(a, b), f"{p.name}: workers={w} differs from the plain loop"
            rows.append((f"segment_batch workers={w}" + (" (no cluster)" if w == 0 else " (LocalCluster)"), wall, cpu))
        base, base_cpu = rows[0][1], rows[0][2]
        print(f"{len(paths)} DSB2018 images, {args.model}, points_per_side={args.points_per_side}, "
              f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; labels identical in every run; "
              f"load average (1, 5, 15 min) before {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, "
              f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'run':40s} {'wall s':>8s} {'images/s':>9s} {'vs plain loop':>14s} {'CPU s':>8s} {'vs plain':>9s}")
        for name, wall, cpu in rows:
            print(f"{name:40s} {wall:8.2f} {len(paths) / wall:9.2f} {100 * (wall / base - 1):+13.1f}% "
                  f"{cpu:8.1f} {100 * (cpu / base_cpu - 1):+8.1f}%")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
