"""SAM 2.1 on this CPU: napari-sam (its own networks, ``SamPredictor``, ``VolumeTracker``) against
Meta's code (``SAM2ImagePredictor``, ``SAM2VideoPredictor``), the same weights (random, official
format), the same process, printed side by side.

- image encoder: ``set_image`` of a 512x512 image (both stretch it to 1024x1024), median of ``--runs``;
- click: one point -> 3 masks at the image's size, median of 10 after a warm-up;
- propagation: one object clicked on slice 0 of an ``--slices`` stack, propagated forward, seconds
  per slice including each slice's image encoding (what a user waits for).

    python bench/bench_sam2.py [--arch sam2.1_hiera_tiny] [--runs 3] [--slices 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "volume"))
sys.path.insert(0, str(ROOT / "src"))


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sam2.1_hiera_tiny")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slices", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import _sam2_reference as ref
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.models.sam import build_model
    from napari_sam.volume.tracker import VolumeTracker

    meta = ref.build_reference(args.arch, seed=0)
    ours = build_model(args.arch)
    ours.load_state_dict(meta.state_dict(), strict=True)
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (32, 32, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    pt, lab = np.array([[200.0, 150.0]]), np.array([1])

    mine, theirs = SamPredictor(ours, device="cpu"), SAM2ImagePredictor(meta)
    rows = []
    with torch.inference_mode():
        mine.set_image(img)
        theirs.set_image(img)
        t_ours = median_time(lambda: mine.set_image(img), args.runs)
        t_meta = median_time(lambda: theirs.set_image(img), args.runs)
        rows.append(("image encoder (set_image 512x512)", t_ours * 1e3, t_meta * 1e3))
        mine.predict(pt, lab)
        theirs.predict(point_coords=pt, point_labels=lab)
        c_ours = median_time(lambda: mine.predict(pt, lab), 10)
        c_meta = median_time(lambda: theirs.predict(point_coords=pt, point_labels=lab), 10)
        rows.append(("click (1 point -> 3 masks)", c_ours * 1e3, c_meta * 1e3))

        from test_tracker import meta_state, structured_stack

        vol = structured_stack(args.slices, 256, 256, seed=1)
        tracker = VolumeTracker(ours, vol, cache_size=1)
        tracker.add_prompt(0, 1, points=[[60.0, 64.0]])
        t = time.perf_counter()
        tracker.propagate("forward")
        p_ours = (time.perf_counter() - t) / (args.slices - 1)

        video = ref.build_reference(args.arch, seed=0, video=True)

        class _Patch:  # meta_state's monkeypatch, by hand
            def setattr(self, obj, name, value):
                setattr(obj, name, value)

        state = meta_state(video, VolumeTracker(video, vol), _Patch())
        video.add_new_points_or_box(state, 0, 1, points=[[60.0, 64.0]], labels=[1])
        t = time.perf_counter()
        for _ in video.propagate_in_video(state):
            pass
        # Meta's state holds its frames preprocessed up front (not timed); add its encoder per slice
        p_meta = (time.perf_counter() - t) / args.slices
    rows.append(("propagation per slice (ours incl. encoding)", p_ours * 1e3, p_meta * 1e3))
    print(f"{args.arch}, CPU, {torch.get_num_threads()} threads, fp32 (random weights, official format)")
    print(f"{'':46s} {'napari-sam':>12s} {'Meta':>12s} {'speed-up':>9s}")
    for name, a, b in rows:
        print(f"{name:46s} {a:10.1f}ms {b:10.1f}ms {b / a:8.2f}x")


if __name__ == "__main__":
    main()
