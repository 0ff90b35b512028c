"""Timing and memory of the volume loop and the embedding store.

A synthetic 100-slice 512x512 uint8 stack (tests/_synthetic.py, 6 ellipsoids) and the project's
small ``nano`` model (512-px FPN encoder, 128x64x64 embeddings; random weights unless
``--model`` names weights: speed does not depend on them). Prints:

- encoding: seconds per slice for ``precompute`` into a zarr disk cache (cold);
- one decoder call (``predict_batch``, box+point+mask prompts) for 1 and for all objects;
- propagation: seconds per slice step of ``segment_volume`` with all objects, embeddings in memory
  (stop criteria loosened so that every object travels through every slice);
- store memory: bytes per slice, measured for the 100-slice run and extrapolated to 500 slices;
  and the same for SAM ViT (256x64x64) by arithmetic;
- disk: bytes of the zarr store per slice, and the time to reopen a warm store (hash + open) and
  read all slices back.

    python bench/bench_volume.py [--slices 100] [--size 512] [--cache-dir DIR] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timeit(fn, repeat: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument(
        "--model", default="random", help="'random' (nano arch) or a napari_sam.weights name/path"
    )
    ap.add_argument("--cache-dir", type=Path, default=None, help="zarr cache folder (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from _synthetic import ellipsoid_volume

    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.volume.propagate import segment_volume
    from napari_sam.volume.result import mask_box, mask_point
    from napari_sam.volume.store import EmbeddingStore

    torch.set_num_threads(2)
    if args.model == "random":
        from napari_sam.models.sam import build_model

        torch.manual_seed(0)
        model = build_model("nano")
    else:
        from napari_sam.weights.loading import load_model

        model = load_model(args.model)
    predictor = SamPredictor(model, device="cpu")
    vol, labels, info = ellipsoid_volume(
        (args.slices, args.size, args.size),
        n_objects=args.objects,
        radii=(args.size / 40, args.size / 12),
        seed=1,
    )
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="napari_sam_bench_"))
    out: dict = {
        "model": f"{args.model} ({model.arch}, img_size {model.img_size})",
        "stack": list(vol.shape),
        "objects": len(info),
        "torch_threads": torch.get_num_threads(),
    }

    t0 = time.perf_counter()
    store = EmbeddingStore(predictor, vol, cache_dir=cache, budget_bytes=4 << 30)
    out["open_cold_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_new = store.precompute()
    out["encode_s_per_slice"] = (time.perf_counter() - t0) / max(1, n_new) if n_new else None
    out["encoded_now"] = n_new
    print(json.dumps(out), flush=True)

    # one decoder call
    emb = store.get(args.slices // 2)
    predictor.set_image_embedding(emb)
    z = args.slices // 2
    objs = [o for o in info if (labels[z] == o["id"]).any()] or info[:1]
    masks = [labels[z] == o["id"] for o in objs]
    low = np.zeros((len(objs), 1, *predictor.mask_input_size), np.float32)
    pts = np.stack([mask_point(m) for m in masks])[:, None]
    boxes = np.stack([mask_box(m, 0.1) for m in masks])
    ones = np.ones((len(objs), 1))
    out["decoder_call_1obj_s"] = timeit(
        lambda: predictor.predict_batch(pts[:1], ones[:1], boxes[:1], low[:1])
    )
    out["decoder_call_all_s"] = timeit(lambda: predictor.predict_batch(pts, ones, boxes, low))
    out["decoder_objects"] = len(objs)
    out["set_embedding_plus_get_s"] = timeit(lambda: predictor.set_image_embedding(store.get(z)))

    # propagation, all objects, every slice
    seeds = {
        o["id"]: {int(round(o["center"][0])): {"points": [[o["center"][2], o["center"][1]]]}} for o in info
    }
    loose = dict(iou_threshold=-np.inf, overlap_threshold=0.0, min_area=0, stability_threshold=-1.0)
    steps, in_decoder = [], [0.0, 0]
    decode = predictor.predict_batch

    def timed_decode(*a, **k):  # how much of a propagation step is the decoder call itself
        t = time.perf_counter()
        try:
            return decode(*a, **k)
        finally:
            in_decoder[0] += time.perf_counter() - t
            in_decoder[1] += 1

    predictor.predict_batch = timed_decode
    t0 = time.perf_counter()
    res = segment_volume(store, seeds=seeds, progress=lambda d, t: steps.append(d), **loose)
    dt = time.perf_counter() - t0
    del predictor.predict_batch
    out["propagation_decoder_calls"] = in_decoder[1]
    out["propagation_decoder_share"] = in_decoder[0] / dt
    out["propagation_overhead_s_per_step"] = (dt - in_decoder[0]) / max(1, in_decoder[1])
    calls = len(steps) - 1
    out["propagation_total_s"] = dt
    out["propagation_slice_steps"] = calls
    out["propagation_s_per_step"] = dt / max(1, calls)
    out["result_slices"] = len(res.slices)

    # memory and disk
    out["store_bytes_per_slice"] = store.slice_nbytes
    out["store_memory_measured_bytes"] = store.nbytes
    out["store_memory_500_slices_MiB"] = 500 * store.slice_nbytes / 2**20
    out["sam_vit_500_slices_MiB"] = 500 * 256 * 64 * 64 * 2 / 2**20
    disk = store.disk_nbytes()
    out["disk_bytes_total"] = disk
    out["disk_MiB_500_slices"] = 500 * disk / args.slices / 2**20
    t0 = time.perf_counter()
    warm = EmbeddingStore(predictor, vol, cache_dir=cache)
    out["reopen_warm_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.slices):
        warm.get(i)
    out["read_all_from_disk_s"] = time.perf_counter() - t0
    out["reopen_encoded"] = warm.stats["computed"]
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
