"""A volume larger than a worker's memory: ``napari-sam batch --mode volume`` on a synthetic OME-Zarr stack
several times larger than the memory cap of its dask worker, with the worker's peak resident memory
printed beside the cap and the volume's size.

The stack is (slices, size, size) uint8 in (1, size, size) chunks: a constant background and a few
ball-shaped nuclei, each seeded by a disk (its cross-section) on its middle slice (a seeds OME-Zarr of the same shape). One
worker process runs with ``memory_limit=--cap-gb`` (dask's nanny kills a worker that passes 95 % of it,
and the task would then be reported failed); its peak RSS (``ru_maxrss``) is read from the worker after
the run. The volume is read slice by slice where objects are carried, and the labels (int32, the
size of the stack x 4) are written slice by slice.

    python bench/bench_batch_memory.py                       # 1000 x 2048 x 2048 (4 GiB) under a 1.5 GiB cap
    python bench/bench_batch_memory.py --slices 200 --size 1024 --cap-gb 1.2
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import zarr  # noqa: E402

GiB = 2**30


def _ome_group(path: Path, shape: tuple[int, int, int], dtype: str) -> zarr.Array:
    group = zarr.open_group(str(path), mode="w")
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [
        {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]}
    return group.create_array("0", shape=shape, dtype=dtype, chunks=(1, shape[1], shape[2]), fill_value=0)


def make_volume(root: Path, n: int, size: int, objects: int, radius: int) -> tuple[Path, Path, list[tuple]]:
    """The stack and its seeds; returns their paths and the balls (z, y, x)."""
    rng = np.random.default_rng(0)
    vol = _ome_group(root / "stack.zarr", (n, size, size), "uint8")
    seeds = _ome_group(root / "stack_seeds.zarr", (n, size, size), "int32")
    balls = [(int(rng.integers(radius, n - radius)), int(rng.integers(radius, size - radius)),
              int(rng.integers(radius, size - radius))) for _ in range(objects)]
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]  # a ball's box, centred
    background = np.full((size, size), 20, np.uint8)
    for z in range(n):
        sl = background.copy()
        for k, (cz, cy, cx) in enumerate(balls):
            r2 = radius**2 - (z - cz) ** 2
            if r2 > 0:
                box = (slice(cy - radius, cy + radius + 1), slice(cx - radius, cx + radius + 1))
                sl[box][yy**2 + xx**2 < r2] = 200
                if z == cz:
                    seed = np.zeros((size, size), np.int32)
                    seed[box][yy**2 + xx**2 < r2] = k + 1
                    seeds[z] = seed
        vol[z] = sl
    return root / "stack.zarr", root / "stack_seeds.zarr", balls


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--radius", type=int, default=12, help="ball radius in slices and pixels")
    ap.add_argument("--cap-gb", type=float, default=1.5, help="the worker's memory_limit, GiB")
    ap.add_argument("--model", default="nano_nuclei")
    args = ap.parse_args()

    import dask
    from distributed import Client, LocalCluster

    from napari_sam.batch import segment_batch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        stack, seeds, balls = make_volume(root, args.slices, args.size, args.objects, args.radius)
        made = time.perf_counter() - t0
        stack_bytes = args.slices * args.size**2
        cap = int(args.cap_gb * GiB)
        # a worker near its limit must be killed (failing the task), not paused (hanging the run)
        with dask.config.set({"distributed.worker.memory.pause": False, "distributed.worker.memory.spill": False,
                              "distributed.worker.memory.target": False}):
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=cap,
                              dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
                t0 = time.perf_counter()
                report = segment_batch([stack], root / "out", mode="volume", seeds=seeds, model=args.model,
                                       scheduler=cluster.scheduler_address)
                seconds = time.perf_counter() - t0
                peaks = client.run(_peak_rss)
        rec = report.records[0]
        labels = zarr.open_group(str(root / "out" / "stack_labels.zarr"), mode="r")["0"]
        print(f"stack {args.slices} x {args.size} x {args.size} uint8 = {stack_bytes / GiB:.2f} GiB in memory "
              f"(labels int32: {4 * stack_bytes / GiB:.2f} GiB), {len(balls)} seeded balls of radius {args.radius}; "
              f"written in {made:.0f} s")
        print(f"batch: status {rec['status']}, {rec['objects']} objects, {seconds:.1f} s; {rec.get('message', '')}")
        for addr, peak in peaks.items():
            print(f"worker {addr}: peak RSS {peak / GiB:.2f} GiB | memory cap {cap / GiB:.2f} GiB | "
                  f"stack {stack_bytes / GiB:.2f} GiB = {stack_bytes / cap:.1f}x the cap, labels {4 * stack_bytes / cap:.1f}x")
        for k, (cz, cy, cx) in enumerate(balls):
            zs = [z for z in range(max(0, cz - 3 * args.radius), min(args.slices, cz + 3 * args.radius))
                  if labels[z, cy, cx] == k + 1]
            print(f"  object {k + 1}: true slices {cz - args.radius + 1}-{cz + args.radius - 1}, "
                  f"labelled at its centre on {len(zs)} slices ({min(zs) if zs else '-'}-{max(zs) if zs else '-'})")


if __name__ == "__main__":
    main()
