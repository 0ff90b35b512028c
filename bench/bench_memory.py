"""Resident memory over a long session (issue 23): many clicks on one image, many slice changes on a stack.

Run: ``python bench/bench_memory.py [--clicks 1000] [--slice-changes 200] [--size 512]`` (no display
needed: the viewer is napari's ``ViewerModel``, the same layers and dims the widget drives).
Model: the built-in ``nano_nuclei`` on the CPU. Prints resident memory (RSS, from ``/proc`` or psutil)

- after 0, 250, 500 and 1000 clicks on one image: a "click" adds a point to the "SAM points" layer
  (what napari's add mode does), the preview is decoded (the widget's path, refinement included);
  every third click commits the object (one undo step in the Labels layer) and clears the prompts;
- after 0, 50, 100, 150 and 200 slice changes on a (64, size, size) stack: each moves the slider to
  a random slice, whose embedding is computed (LRU cache of 8 slices) and clicked once.

A leak shows as RSS growing with the count; the embedding cache, the undo history of committed
objects and Python's allocator give the expected plateau. Figures: docs/errors.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil  # macOS / Windows

        return psutil.Process().memory_info().rss / 2**20


def blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Bright disks on a dark, noisy background (uint8), like nuclei."""
    rng = np.random.default_rng(seed)
    img = rng.normal(20, 5, shape)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    for _ in range(40):
        cy, cx, r = rng.uniform(0, shape[-2]), rng.uniform(0, shape[-1]), rng.uniform(6, 16)
        img[..., (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
    return np.clip(img, 0, 255).astype(np.uint8)


def clicks(sam, image_layer, n: int, marks: list[int], size: int) -> list[tuple[int, float]]:
    sam.set_image_layer(image_layer)
    sam.embedding()
    rng = np.random.default_rng(1)
    out = []
    for k in range(n + 1):
        if k in marks:
            gc.collect()
            out.append((k, rss_mb()))
            print(f"  {k:5d} clicks: {out[-1][1]:8.1f} MiB", flush=True)
        if k == n:
            break
        sam.add_point(rng.uniform(8, size - 8, 2), positive=bool(k % 3 != 2))
        if k % 3 == 2 and sam.preview.has_objects:
            sam.commit()
    return out


def slice_changes(sam, viewer, stack_layer, n: int, marks: list[int], size: int) -> list[tuple[int, float]]:
    sam.set_image_layer(stack_layer)
    rng = np.random.default_rng(2)
    out = []
    for k in range(n + 1):
        if k in marks:
            gc.collect()
            out.append((k, rss_mb()))
            print(f"  {k:5d} slice changes: {out[-1][1]:8.1f} MiB", flush=True)
        if k == n:
            break
        viewer.dims.set_current_step(0, int(rng.integers(0, stack_layer.data.shape[0])))
        sam.embedding()
        sam.segment(points=rng.uniform(8, size - 8, (1, 2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=1000)
    ap.add_argument("--slice-changes", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=64)
    args = ap.parse_args()

    import torch
    from napari.components import ViewerModel

    from napari_sam.viewer.segment_anything import SegmentAnything

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    t0 = time.perf_counter()
    print(f"start: {rss_mb():.1f} MiB (imports)")
    viewer = ViewerModel()
    sam = SegmentAnything(viewer)
    sam.set_model("nano_nuclei", device="cpu")
    image = viewer.add_image(blobs((args.size, args.size), 0), name="image")
    stack = viewer.add_image(blobs((args.slices, args.size, args.size), 1), name="stack")
    print(f"model and images loaded: {rss_mb():.1f} MiB")
    click_marks = sorted({0, args.clicks // 4, args.clicks // 2, args.clicks})
    print(f"clicks on one {args.size}x{args.size} image (commit every third):")
    a = clicks(sam, image, args.clicks, click_marks, args.size)
    print(f"slice changes on a ({args.slices}, {args.size}, {args.size}) stack:")
    slice_marks = sorted({0, *range(0, args.slice_changes + 1, max(1, args.slice_changes // 4))})
    b = slice_changes(sam, viewer, stack, args.slice_changes, slice_marks, args.size)
    print(f"clicks: +{a[-1][1] - a[0][1]:.1f} MiB over {args.clicks}; "
          f"slice changes: +{b[-1][1] - b[0][1]:.1f} MiB over {args.slice_changes}; "
          f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
