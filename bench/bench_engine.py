"""Engine benchmark: our SamPredictor + models vs the official segment-anything, same process, same weights.

Prints a table of medians (encoder latency on a 1024x1024 input; prompt-to-mask latency for one
point, multimask, decoder + post-processing to the full resolution of a 1024x1024 and a
2048x1536 image) and the agreement of embeddings and masks. Runs of ours and of the official are
interleaved, so that load from other processes hits both alike.

    python bench/bench_engine.py                      # vit_b, CPU, fp32
    python bench/bench_engine.py --encoder-runs 0     # prompt-to-mask only
    python bench/bench_engine.py --precision bf16     # our encoder under bf16 autocast
    python bench/bench_engine.py --device cuda        # ours (bf16 autocast by default) vs official fp32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _reference import official  # noqa: E402

from napari_sam.models.sam import build_model  # noqa: E402
from napari_sam.predictor import ImageEmbedding, SamPredictor  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _interleaved(fns: dict, runs: int, device: torch.device, warmup: int = 1) -> dict[str, float]:
    """Median seconds per function, the functions called in turn ``runs`` times after warm-up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def _image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.3) % 255, (yy * 0.4) % 255, ((xx + yy) * 0.2) % 255], -1)
    img[h // 4 : h // 2, w // 4 : w // 2] = (230, 40, 40)
    return img.astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision", default="auto", help="ours: auto (bf16 on cuda, fp32 on cpu), fp32, bf16, fp16"
    )
    ap.add_argument("--encoder-runs", type=int, default=3)
    ap.add_argument("--decoder-runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile our image encoder (slow warm-up)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    sa = official()
    torch.manual_seed(0)
    ref_model = sa.sam_model_registry[args.arch]().eval()
    our_model = build_model(args.arch)
    our_model.load_state_dict(ref_model.state_dict(), strict=True)
    device = torch.device(args.device)
    ref_model.to(device)
    ours = SamPredictor(our_model, device=device, precision=args.precision)
    ref = sa.SamPredictor(ref_model)
    if args.compile:
        our_model.image_encoder = torch.compile(our_model.image_encoder)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, arch {args.arch}, "
        f"ours precision={args.precision} (autocast {ours.autocast_dtype}), compile={args.compile}"
    )
    rows: list[tuple[str, float, float]] = []

    # -- encoder: the same 1024x1024 image through both, interleaved
    if args.encoder_runs > 0:
        img = _image(1024, 1024)
        fns = {"ours": lambda: ours.set_image(img), "official": lambda: ref.set_image(img)}
        med = _interleaved(fns, args.encoder_runs, device, warmup=0)
        rows.append(("encoder 1024x1024", med["ours"], med["official"]))
        diff = (ours.features.float() - ref.features).abs()
        cos = torch.nn.functional.cosine_similarity(  # float64: a float32 sum of 1M terms drifts past 1
            ours.features.flatten().double(), ref.features.flatten().double(), dim=0
        )
        print(f"embedding: max |ours - official| = {diff.max().item():.2e}, cosine {cos.item():.6f}")
        pt, lb = np.array([[300, 300]]), np.array([1])
        a, b = ref.predict(pt, lb), ours.predict(pt, lb)
        print(
            f"masks from each encoder's embedding (1 point, multimask): pixel agreement "
            f"{(a[0] == b[0]).mean():.6f}, max |score diff| {np.abs(a[1] - b[1]).max():.2e}"
        )

    # -- prompt-to-mask: same random embedding in both, one point, multimask, full-res masks
    feats = torch.randn(1, 256, *ours.embedding_size, device=device)
    for h, w in [(1024, 1024), (2048, 1536)] if args.decoder_runs > 0 else []:
        input_size = ours.transform.get_preprocess_shape(h, w, ours.img_size)
        ours.set_image_embedding(ImageEmbedding(feats, (h, w), input_size))
        ref.reset_image()
        ref.features, ref.original_size, ref.input_size, ref.is_image_set = feats, (h, w), input_size, True
        pt, lb = np.array([[w / 3, h / 3]]), np.array([1])
        fns = {
            "ours": lambda pt=pt, lb=lb: ours.predict(pt, lb),
            "official": lambda pt=pt, lb=lb: ref.predict(pt, lb),
        }
        med = _interleaved(fns, args.decoder_runs, device, warmup=2)
        rows.append((f"point->masks {h}x{w}", med["ours"], med["official"]))
        a, b = ref.predict(pt, lb), ours.predict(pt, lb)
        print(
            f"{h}x{w}: mask pixel agreement {(a[0] == b[0]).mean():.6f}, "
            f"max |score diff| {np.abs(a[1] - b[1]).max():.2e}, masks {b[0].shape} {b[0].dtype}"
        )

    print(f"\n| {'stage':<24} | {'ours ms':>9} | {'official ms':>11} | {'speed-up':>8} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 13}|{'-' * 10}|")
    for name, o, r in rows:
        print(f"| {name:<24} | {o * 1e3:9.1f} | {r * 1e3:11.1f} | {r / o:7.2f}x |")


if __name__ == "__main__":
    main()
