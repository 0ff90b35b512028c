"""Per-slice time and memory of SAM 2 tracking through a stack: ours (napari_sam.volume.tracker) against
Meta's SAM2VideoPredictor, the same model object (Meta's SAM 2.1 tiny at 1024 px, random weights).

Both get the same image features for every slice (``forward_image`` returns one precomputed backbone),
so this measures the tracking loop: memory attention, decoder, memory encoder and the bookkeeping,
not the image encoder. One object prompted with a click on slice 0, propagated forward. Prints the
mean seconds per slice (after the first 2), the peak resident memory of the process during the
propagation (sampled every 20 ms, above the level before it), and the tensors each bank holds at the end.

    python bench/bench_tracker.py [--slices 40] [--objects 1] [--which ours,meta]

``ours_batch`` in ``--which``: ours with the objects prompted on the same slice tracked as one batch
per slice (``batch_objects=True``); ``ours`` tracks every object alone (the default).

``--long``: our tracker alone (our SAM 2.1 tiny networks, random weights) through a 300-slice
512 x 512 stack: resident memory (now and peak since the start) and the memory bank's size after
slices 50, 100, 200 and 300 (``--checkpoints``). The image features are one precomputed backbone
handed out for every slice through ``VolumeTracker(features=...)`` (no encoder per slice: the
question is the memory bank, not the encoder).

    python bench/bench_tracker.py --long [--slices 300] [--hw 512] [--objects 1] [--image-size 1024] [--trim]

``--trim``: at each checkpoint glibc's ``malloc_trim(0)`` returns the allocator's free pages to the
system and the RSS after it is printed too: growth that it removes was freed memory kept by the
allocator, growth that stays is held by live objects.

``--image-size 512`` runs the model at a 512 px input (32 x 32 memory tokens instead of 64 x 64: a
quarter of the memory per bank entry, about a sixteenth of the attention work), to reach 300 slices
on a busy CPU; the bank's entries are the same.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
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


def long_run(args) -> None:
    """Memory through a long stack (see the module doc, ``--long``)."""
    from napari_sam.models.sam import build_model
    from napari_sam.volume.tracker import VolumeTracker

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=args.image_size)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights, none left at zero (object pointers, memory embeddings)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    proc = psutil.Process()
    with torch.inference_mode():
        s = args.image_size
        image = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
        backbone = model.forward_image(image)
    n, hw = args.slices, (args.hw, args.hw)
    marks = sorted({int(c) for c in args.checkpoints.split(",") if 0 < int(c) <= n})
    print(f"--long: {n} slices of {hw[0]}x{hw[1]}, sam2.1_hiera_tiny (ours, random weights, "
          f"{args.image_size} px input), {args.objects} object(s), forward; image features: one precomputed backbone for every slice "
          f"(features= callable, no encoder per slice)", flush=True)
    tracker = VolumeTracker(model, np.zeros((n, *hw), np.uint8), features=lambda z: backbone)
    for k in range(args.objects):
        tracker.add_prompt(0, k + 1, points=[[hw[1] * (k + 1) / (args.objects + 1), hw[0] / 2]])
    rows: list[dict] = []
    start = time.perf_counter()
    with PeakRSS() as peak:
        def on_slice(z, masks):
            if z + 1 in marks:
                bank = tensor_bytes([o.output_dict for o in tracker.objects.values()])
                result = sum(m.nbytes for per in tracker.result.masks.values() for m in per.values())
                row = {
                    "slices_done": z + 1,
                    "rss_mib": round(proc.memory_info().rss / 2**20, 1),
                    "peak_rss_mib": round(max(peak.peak, proc.memory_info().rss) / 2**20, 1),
                    "bank_entries": sum(tracker.memory_entries().values()),
                    "bank_mib": round(bank / 2**20, 1),
                    "result_masks_mib": round(result / 2**20, 1),
                    "s_per_slice": round((time.perf_counter() - start) / (z + 1), 2),
                }
                if args.trim:  # hand glibc's free pages back: what remains is held by live objects
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                    row["rss_after_trim_mib"] = round(proc.memory_info().rss / 2**20, 1)
                rows.append(row)
                print(row, flush=True)

        tracker.propagate("forward", on_slice=on_slice)
    found = {oid: len(tracker.found(oid)) for oid in tracker.object_ids}
    before = round(peak.base / 2**20, 1)
    print(json.dumps({"long": rows, "found_slices_per_object": found, "rss_mib_before": before}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=None)
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--which", default="ours,meta")
    ap.add_argument("--long", action="store_true", help="memory through a long stack (ours only)")
    ap.add_argument("--hw", type=int, default=512)
    ap.add_argument("--checkpoints", default="50,100,200,300")
    ap.add_argument("--image-size", type=int, default=1024, help="--long: the model's input side (SAM 2.1: 1024)")
    ap.add_argument("--trim", action="store_true",
                    help="--long: at each checkpoint also the RSS after glibc's malloc_trim(0) (allocator vs live memory)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the shared CPU: OMP_NUM_THREADS=1
    if args.long:
        args.slices = args.slices or 300
        return long_run(args)
    args.slices = args.slices or 40
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
            if which in ("ours", "ours_batch"):
                t = VolumeTracker(model, np.zeros((n, *hw), np.uint8), batch_objects=which == "ours_batch")
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
