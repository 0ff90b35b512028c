"""SAM 2.1 image encoder on the CPU: ours (napari_sam.models.sam2) against Meta's (../shared/reference/sam2),
same random weights, 1024x1024 fp32, 2 threads, inference mode. Runs alternate between the two
(a warm-up each first) so that a load change on a shared machine hits both alike; prints the
medians of wall time and of the process's CPU time (all threads; steadier than wall time when other
jobs share the cores), the wall spread, and the largest output difference.

    PYTHONPATH=src:tests python bench/bench_sam2_encoder.py [--archs tiny base_plus] [--runs 5] [--size 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "models" / "sam2")]

import torch  # noqa: E402


def timed(model: torch.nn.Module, x: torch.Tensor) -> tuple[tuple[float, float], dict]:
    """(wall seconds, CPU seconds of the process), the outputs."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = model(x)
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "base_plus"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from test_image_encoder import (
        meta_image_encoder,
        ours_from,
    )  # (Meta's from its config; ours loaded from it)

    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size} fp32, median of {args.runs}"
    )
    print(f"{'':<12} {'---- wall ms ----':^26}   {'---- CPU ms ----':^26}")
    print(
        f"{'arch':<12} {'ours':>8} {'Meta':>8} {'ratio':>7}   {'ours':>8} {'Meta':>8} {'ratio':>7}   wall spread (ours / Meta)   max abs diff"
    )
    for name in args.archs:
        arch = f"sam2.1_hiera_{name}"
        meta = meta_image_encoder(arch)
        ours = ours_from(meta, arch)
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        t_ours, t_meta = [], []
        with torch.inference_mode():
            _, a = timed(ours, x)  # warm-up (and the outputs compared)
            _, b = timed(meta, x)
            diff = max(
                (p - q).abs().max().item()
                for p, q in zip(
                    [a["vision_features"], *a["vision_pos_enc"], *a["backbone_fpn"]],
                    [b["vision_features"], *b["vision_pos_enc"], *b["backbone_fpn"]],
                    strict=True,
                )
            )
            del a, b
            for _ in range(args.runs):
                t_ours.append(timed(ours, x)[0])
                t_meta.append(timed(meta, x)[0])
        row = f"{name:<12}"
        for k in (0, 1):
            mo, mm = (statistics.median(t[k] for t in ts) * 1e3 for ts in (t_ours, t_meta))
            row += f" {mo:>8.0f} {mm:>8.0f} {mm / mo:>6.2f}x  "
        wo, wm = [t[0] * 1e3 for t in t_ours], [t[0] * 1e3 for t in t_meta]
        spread = f"{min(wo):.0f}-{max(wo):.0f} / {min(wm):.0f}-{max(wm):.0f}"
        print(f"{row} {spread:<27} {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
