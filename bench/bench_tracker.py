"""Per-slice time and memory of SAM 2 tracking through a stack: ours (napari_sam.volume.tracker) against
Meta's SAM2VideoPredictor, the same model object (Meta's SAM 2.1 tiny at 1024 px, random weights).

Both get the same image features for every slice (``forward_image`` returns one precomputed backbone),
so this measures the tracking loop: memory attention, decoder, memory encoder and the bookkeeping,
not the image encoder. One object prompted with a click on slice 0, propagated forward. Prints the
mean seconds per slice (after the first 2), the peak resident memory of the process during the
propagation (sampled every 20 ms, above the level before it), and the tensors each bank holds at the end.

    python bench/bench_tracker.py [--slices 40] [--objects 1] [--which ours,meta]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


class PeakRSS:
    """Peak resident memory of this process while in the ``with`` block, above its level at entry."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def tensor_bytes(obj) -> int:
    seen: set[int] = set()

    def walk(o) -> int:
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return o.untyped_storage().nbytes()
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, list | tuple):
            return sum(walk(v) for v in o)
        return 0

    return walk(obj)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--which", default="ours,meta")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from _sam2_reference import build_reference, sam2_package

    from napari_sam.volume.tracker import VolumeTracker

    sam2_package()  # makes `import sam2` work
    svp = importlib.import_module("sam2.sam2_video_predictor")

    model = build_reference("sam2.1_hiera_tiny", seed=0, video=True)
    model.fill_hole_area = 0
    with torch.inference_mode():
        backbone = model.forward_image(
            torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        )
    model.forward_image = lambda img: backbone
    n, hw = args.slices, (96, 128)
    clicks = [[[20.0 + 25 * k, 40.0]] for k in range(args.objects)]
    report: dict = {"slices": n, "objects": args.objects}

    for which in args.which.split(","):
        times: list[float] = []
        last = [time.perf_counter()]

        def tick(*_, times=times, last=last):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        with torch.inference_mode():
            if which == "ours":
                t = VolumeTracker(model, np.zeros((n, *hw), np.uint8))
                for k, c in enumerate(clicks):
                    t.add_prompt(0, k + 1, points=c)
                with PeakRSS() as peak:
                    last[0] = time.perf_counter()
                    t.propagate("forward", on_slice=tick)
                held = tensor_bytes([o.output_dict for o in t.objects.values()])
                entries = sum(t.memory_entries().values())
            else:
                svp.load_video_frames = lambda **kw: (torch.zeros(n, 3, 1, 1), *hw)
                state = model.init_state(video_path="unused")
                for k, c in enumerate(clicks):
                    model.add_new_points_or_box(state, 0, k + 1, points=c, labels=[1])
                with PeakRSS() as peak:
                    last[0] = time.perf_counter()
                    for _ in model.propagate_in_video(state):
                        tick()
                held = tensor_bytes(list(state["output_dict_per_obj"].values()))
                entries = sum(
                    len(d["cond_frame_outputs"]) + len(d["non_cond_frame_outputs"])
                    for d in state["output_dict_per_obj"].values()
                )
        report[which] = {
            "s_per_slice": round(float(np.mean(times[2:])), 3),
            "peak_rss_mib_during_propagation": round(peak.mib, 1),
            "bank_mib_at_end": round(held / 2**20, 1),
            "bank_entries_at_end": entries,
        }
        print(which, report[which], flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
