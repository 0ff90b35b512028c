"""Engine benchmark: our SamPredictor + models vs the official segment-anything, same process, same weights.

Prints a table of medians (encoder latency on a 1024x1024 input; prompt-to-mask latency for one
point, multimask, decoder + post-processing to the full resolution of a 1024x1024 and a
2048x1536 image, the same as the first click on an image (ours then decodes without the image's
per-image preparation, which the predictor makes from an image's second prompt call on), the
same with that preparation made ahead (``SamPredictor.prepare_embedding``, as the widget's encode
worker does: "1st click, prep. ahead"), and for a refining click: two points and the first
click's low-res logits as ``mask_input``, one mask) and
the agreement of embeddings and masks. Runs of ours and of the official are
interleaved, so that load from other processes hits both alike.

    python bench/bench_engine.py                      # vit_b, CPU, fp32
    python bench/bench_engine.py --encoder-runs 0     # prompt-to-mask only
    python bench/bench_engine.py --precision bf16     # our encoder under bf16 autocast
    python bench/bench_engine.py --device cuda        # ours (bf16 autocast by default) vs official fp32
    python bench/bench_engine.py --encoder-runs 0 --real   # + the built-in nano_nuclei on real images

The clicks are timed after an encoder run of each side (``--encoder-runs 0`` still makes one,
untimed, unless ``--fresh-allocator``), as in a session, where an image is encoded before it is
clicked. That matters for the official: in a process that has not encoded yet, glibc's malloc
hands its click's large temporary tensors back to the system and maps them in again at the next
click (~12000 minor page faults and ~25 ms of system time per click at 1024x1024); the encoder's
larger allocations raise malloc's thresholds and its clicks then fault no more. Ours faulted 0
times per click after a few calls in both states (measured without reused buffers, issue 19).
The ``faults`` column shows the median per call of both.

Random weights make noisy masks, for which our post-processing's tile shortcut steps aside (the
worst case for ours). ``--real`` adds prompt-to-mask rows with trained weights and real masks: the
built-in ``nano_nuclei`` (its prompt encoder and mask decoder in the official code, same weights),
one click on a nucleus of dsb2018 images: a 520x696 one, the largest (1040x1388), and that one
enlarged 2x (nearest, 2080x2776: a large microscope field; the model sees the same 512-px input).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

try:
    import resource  # page-fault counts (Unix)
except ImportError:  # pragma: no cover - Windows
    resource = None

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DSB = ROOT.parent / "shared/data/dsb2018"
# (image id, enlargement): a typical 520x696 fluorescence image and the largest one (1040x1388)
REAL_IMAGES = [
    ("07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5", 1),
    ("c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339", 1),
    ("c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339", 2),
]

from _reference import official  # noqa: E402

from napari_sam.engine.predictor import ImageEmbedding, SamPredictor  # noqa: E402
from napari_sam.models.sam import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def _timed(fn, device: torch.device) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    _sync(device)
    f0, t0 = _faults(), time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0, _faults() - f0


def _interleaved(fns: dict, runs: int, device: torch.device, warmup: int = 1) -> dict:
    """Median seconds per function, the functions called in turn ``runs`` times after warm-up;
    ``"paired"``: the median over runs of official / ours (each ratio from two neighbouring calls,
    so that a slow phase of the shared machine hits both sides of it); ``"min"``: the ratio of the
    fastest calls, official / ours (each side's least disturbed run: on a shared machine whose
    load adds time to a call, the closest to its cost on a quiet one); ``"faults"``: the median
    minor page faults per call, ``{name: count}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t, f = _timed(fn, device)
            times[name].append(t)
            faults[name].append(f)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["paired"] = statistics.median(r / o for o, r in zip(times["ours"], times["official"], strict=True))
    med["min"] = min(times["official"]) / min(times["ours"])
    med["faults"] = {k: statistics.median(v) for k, v in faults.items()}
    return med


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
    ap.add_argument("--real", action="store_true", help="also nano_nuclei on real dsb2018 images (trained weights)")
    ap.add_argument(
        "--fresh-allocator",
        action="store_true",
        help="with --encoder-runs 0: time the clicks without encoding an image first (see the docstring)",
    )
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
    rows: list[tuple[str, dict]] = []

    # -- encoder: the same 1024x1024 image through both, interleaved
    if args.encoder_runs > 0:
        img = _image(1024, 1024)
        fns = {"ours": lambda: ours.set_image(img), "official": lambda: ref.set_image(img)}
        med = _interleaved(fns, args.encoder_runs, device, warmup=0)
        rows.append(("encoder 1024x1024", med))
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
    elif args.decoder_runs > 0 and not args.fresh_allocator:
        # an image is encoded before it is clicked: one (untimed) encoder run of each side, which
        # also leaves each side's memory allocator in a session's state (see the docstring)
        img = _image(1024, 1024)
        ours.set_image(img)
        ref.set_image(img)

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
        rows.append((f"point->masks {h}x{w}", med))
        # the first click on an image: ours without the image's decoder preparation (the predictor
        # prepares an image from its second prompt call on), each run on a freshly set embedding
        emb = ImageEmbedding(feats, (h, w), input_size)

        def ours_first(pt=pt, lb=lb, emb=emb):
            ours.set_image_embedding(emb)
            return ours.predict(pt, lb)

        fns = {"ours": ours_first, "official": lambda pt=pt, lb=lb: ref.predict(pt, lb)}
        med = _interleaved(fns, args.decoder_runs, device, warmup=2)
        rows.append((f"first click {h}x{w}", med))
        # the same with the preparation made ahead and kept with the embedding
        # (``prepare_embedding``: what the widget's encode worker does after the encoder)
        ready = ours.prepare_embedding(emb)
        fns = {"ours": partial(ours_first, emb=ready), "official": lambda pt=pt, lb=lb: ref.predict(pt, lb)}
        med = _interleaved(fns, args.decoder_runs, device, warmup=2)
        rows.append((f"1st click, prep. ahead {h}x{w}", med))
        a, b = ref.predict(pt, lb), ours.predict(pt, lb)
        print(
            f"{h}x{w}: mask pixel agreement {(a[0] == b[0]).mean():.6f}, "
            f"max |score diff| {np.abs(a[1] - b[1]).max():.2e}, masks {b[0].shape} {b[0].dtype}"
        )
        # a refining click: a second (negative) point and the first click's best low-res logits
        pt2, lb2 = np.array([[w / 3, h / 3], [w / 3 + w / 20, h / 3 + h / 30]]), np.array([1, 0])
        prev = a[2][np.argmax(a[1])][None]
        kw = dict(mask_input=prev, multimask_output=False)
        fns = {
            "ours": lambda pt=pt2, lb=lb2, kw=kw: ours.predict(pt, lb, **kw),
            "official": lambda pt=pt2, lb=lb2, kw=kw: ref.predict(pt, lb, **kw),
        }
        med = _interleaved(fns, args.decoder_runs, device, warmup=2)
        rows.append((f"refining click {h}x{w}", med))
        a, b = ref.predict(pt2, lb2, **kw), ours.predict(pt2, lb2, **kw)
        print(f"{h}x{w} refining click: mask pixel agreement {(a[0] == b[0]).mean():.6f}, "
              f"max |score diff| {np.abs(a[1] - b[1]).max():.2e}")

    if args.real and args.decoder_runs > 0:
        rows += _real_rows(device, args.decoder_runs)

    print("\nspeed-up: ratio of the medians; paired: median of the per-run ratios; min: ratio of the fastest")
    print("runs; faults: median minor page faults per call, ours / official (fresh memory the allocator")
    print("maps in at every call)")
    print(
        f"| {'stage':<32} | {'ours ms':>9} | {'official ms':>11} | {'speed-up':>8} | {'paired':>7} | {'min':>6} "
        f"| {'faults':>17} |"
    )
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 13}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 19}|")
    for name, med in rows:
        o, r, pr, mn, f = med["ours"], med["official"], med["paired"], med["min"], med["faults"]
        faults = f"{f['ours']:.0f} / {f['official']:.0f}"
        print(
            f"| {name:<32} | {o * 1e3:9.1f} | {r * 1e3:11.1f} | {r / o:7.2f}x | {pr:6.2f}x | {mn:5.2f}x "
            f"| {faults:>17} |"
        )


def _real_rows(device: torch.device, runs: int) -> list[tuple[str, dict]]:
    """Prompt-to-mask with the built-in nano_nuclei (trained) on real images: ours vs the official
    prompt encoder + mask decoder with the same weights, sharing our embedding."""
    from bench_automatic import official_twin
    from PIL import Image

    from napari_sam.weights import load_model

    model = load_model("nano_nuclei", device=device)
    sa, twin = official_twin(model)
    ours, ref = SamPredictor(model, device=device), sa.SamPredictor(twin)
    rows = []
    for sid, k in REAL_IMAGES:
        img = np.array(Image.open(DSB / "images" / f"{sid}.png").convert("RGB"))
        lab = np.array(Image.open(DSB / "labels" / f"{sid}.png"))
        img, lab = (np.kron(a, np.ones((k, k) + (1,) * (a.ndim - 2), a.dtype)) for a in (img, lab))
        ours.set_image(img)
        ref.reset_image()
        ref.features, ref.original_size, ref.input_size = ours.features, img.shape[:2], ours.input_size
        ref.is_image_set = True
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        yy, xx = np.nonzero(lab == ids[np.argsort(counts)[len(counts) // 2]])  # a median-sized nucleus
        pt, lb = np.array([[xx.mean(), yy.mean()]]), np.array([1])
        fns = {"ours": lambda pt=pt, lb=lb: ours.predict(pt, lb), "official": lambda pt=pt, lb=lb: ref.predict(pt, lb)}
        med = _interleaved(fns, runs, device, warmup=2)
        h, w = img.shape[:2]
        rows.append((f"nano real {h}x{w}", med))
        a, b = ref.predict(pt, lb), ours.predict(pt, lb)
        print(
            f"nano_nuclei {h}x{w}: mask pixel agreement {(a[0] == b[0]).mean():.6f}, "
            f"max |score diff| {np.abs(a[1] - b[1]).max():.2e}, mask areas {b[0].sum((1, 2)).tolist()}"
        )
    return rows


if __name__ == "__main__":
    main()
