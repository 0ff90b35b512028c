"""Every GPU figure of the engine in one run, ours side by side with Meta's ``segment-anything``.

Same process, same weights (vit_b with random weights in the official format, or the packaged
``nano_nuclei``), runs of both sides interleaved; medians in ms and the ratio official / ours
(> 1: ours faster). Sections:

- ``first``: the first encode of a fresh process (a subprocess per side: model built, moved to
  the GPU, one 1024x1024 image), what a user meets on the first image;
- ``encoder``: vit_b at batch 1 (ours bf16 autocast vs the official under the same autocast, and
  the official in fp32), and ours at batch 8 and 16 through ``SamPredictor.encode_batch`` (with
  the official's image encoder at the same batch under autocast), with TFLOP/s from
  ``torch.utils.flop_counter`` and the share of the bf16 peak;
- ``click``: prompt to full-resolution masks on the host (``predict``, numpy out): one point at
  1024x1024 and 2048x1536, a refining click (2 points + the previous low-res logits, one mask),
  ours with CUDA graphs (the default on CUDA) and eager;
- ``automatic``: segment everything, 32x32 points: ``nano_nuclei`` at its registry thresholds
  and at SAM's on a real 520x696 image, vit_b at SAM's on a synthetic 1024x1024 one.

    python bench/bench_gpu.py                 # on a CUDA machine (bench/gpu.sh wraps it)
    python bench/bench_gpu.py --device cpu --quick   # the same code, tiny run counts (a dry run)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
DSB_IMAGE = "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5.png"
PEAK_BF16 = {"measured matmul (device README)": 790e12, "H200 spec dense": 989e12}

from _reference import official  # noqa: E402
from bench_automatic import official_twin, timed  # noqa: E402

from napari_sam.automatic.generator import AutomaticMaskGenerator  # noqa: E402
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor  # noqa: E402
from napari_sam.models.sam import build_model  # noqa: E402
from napari_sam.weights.registry import automatic_defaults  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _interleaved(fns: dict, runs: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, called in turn ``runs`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(_time(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def _row(name: str, ours: float, ref: float, extra: str = "") -> None:
    print(f"{name:44s} ours {1e3 * ours:9.2f} ms   official {1e3 * ref:9.2f} ms   ratio {ref / ours:6.2f}x  {extra}", flush=True)


def _image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.3) % 255, (yy * 0.4) % 255, ((xx + yy) * 0.2) % 255], -1)
    img[h // 4 : h // 2, w // 4 : w // 2] = (230, 40, 40)
    return img.astype(np.uint8)


def _pair(arch: str, device: torch.device, sa):
    torch.manual_seed(0)
    ref_model = sa.sam_model_registry[arch]().eval().to(device)
    our_model = build_model(arch)
    our_model.load_state_dict(ref_model.state_dict(), strict=True)
    return our_model.to(device).eval(), ref_model


# ----------------------------------------------------------------------------- first encode
_FIRST = """
import contextlib, sys, time, numpy as np, torch
sys.path[:0] = [{tests!r}, {src!r}]
t0 = time.perf_counter()
img = np.zeros((1024, 1024, 3), np.uint8); img[300:600, 200:500] = 200
side = {side!r}
ctx = contextlib.nullcontext
if side.startswith("ours"):
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.models.sam import build_model
    p = SamPredictor(build_model("vit_b"), device={device!r}, precision="fp32" if side == "ours_fp32" else "auto")
    if side == "ours_no_cudnn_sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
else:
    from _reference import official
    sa = official()
    p = sa.SamPredictor(sa.sam_model_registry["vit_b"]().to({device!r}))
sync = torch.cuda.synchronize if {device!r} == "cuda" else (lambda: None)
sync()
t1 = time.perf_counter()
with ctx():
    p.set_image(img)
sync()
t2 = time.perf_counter()
p.predict(np.array([[350, 450]]), np.array([1]))
sync()
t3 = time.perf_counter()
with ctx():
    p.set_image(img)
sync()
t4 = time.perf_counter()
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}} {{t3 - t2:.3f}} {{t4 - t3:.3f}}")
"""


def first_encode(device: torch.device) -> None:
    print("\n## a fresh process (vit_b, 1024x1024): setup, first set_image, first click, second set_image", flush=True)
    res = {}
    for side in ("warm-up", "ours", "ours_fp32", "ours_no_cudnn_sdpa", "official"):
        # "warm-up": an untimed official run first, so that no timed side pays the machine's cold
        # file caches (CUDA libraries read from disk for the first time)
        code = _FIRST.format(tests=str(ROOT / "tests"), src=str(ROOT / "src"), side=side, device=device.type)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        if out.returncode:
            print(f"{side}: failed\n{out.stderr[-2000:]}")
            continue
        if side == "warm-up":
            continue
        res[side] = [float(v) for v in out.stdout.split()[-4:]]
        setup, enc, click, again = res[side]
        print(f"{side:19s} setup {setup:6.2f} s   first set_image {1e3 * enc:7.1f} ms   first click {1e3 * click:7.1f} ms"
              f"   second set_image {1e3 * again:6.1f} ms", flush=True)
    if "ours" in res and "official" in res:
        _row("first set_image of a process", res["ours"][1], res["official"][1])
        _row("first set_image + first click", res["ours"][1] + res["ours"][2], res["official"][1] + res["official"][2])


# ----------------------------------------------------------------------------- encoder
def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def encoder(device: torch.device, sa, runs: int, batches: list[int]) -> None:
    print("\n## encoder, vit_b, 1024x1024", flush=True)
    ours_model, ref_model = _pair("vit_b", device, sa)
    ours = SamPredictor(ours_model, device=device)  # bf16 autocast on CUDA ("auto")
    ref = sa.SamPredictor(ref_model)
    img = _image(1024, 1024)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def ref_bf16():
        with autocast:
            ref.set_image(img)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def ours_no_cudnn(images=(img,), b=1):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            ours.encode_batch(list(images), batch_size=b)

    med = _interleaved(
        {"ours": lambda: ours.compute_embedding(img), "bf16": ref_bf16, "fp32": lambda: ref.set_image(img),
         "no_cudnn": ours_no_cudnn},
        runs, device,
    )
    _row("encoder batch 1: ours bf16 vs official bf16", med["ours"], med["bf16"])
    _row("encoder batch 1: ours bf16 without cuDNN SDPA vs official bf16", med["no_cudnn"], med["bf16"])
    _row("encoder batch 1: ours bf16 vs official fp32", med["ours"], med["fp32"])
    x = torch.zeros(1, 3, 1024, 1024, device=device)
    with autocast:
        flops = _flops(ours_model.image_encoder, x)
    print(f"vit_b encoder: {flops / 1e12:.3f} TFLOP per image (torch.utils.flop_counter)")
    ref_enc = ref_model.image_encoder
    for b in batches:
        images = [img] * b
        xb = torch.randn(b, 3, 1024, 1024, device=device)

        def ref_batch(xb=xb):
            with torch.inference_mode(), autocast:
                ref_enc(xb)

        med = _interleaved({"ours": lambda images=images, b=b: ours.encode_batch(images, batch_size=b), "ref": ref_batch,
                            "no_cudnn": lambda images=images, b=b: ours_no_cudnn(images, b)},
                           max(2, runs // 4), device, warmup=1)
        _row(f"encoder batch {b}, per image, without cuDNN SDPA", med["no_cudnn"] / b, med["ref"] / b)
        tflops = flops * b / med["ours"]
        shares = ", ".join(f"{100 * tflops / peak:.0f} % of {name}" for name, peak in PEAK_BF16.items())
        _row(f"encoder batch {b}, per image (ours encode_batch)", med["ours"] / b, med["ref"] / b,
             f"ours {tflops / 1e12:.0f} TFLOP/s ({shares})")


# ----------------------------------------------------------------------------- clicks
def clicks(device: torch.device, sa, runs: int) -> None:
    print("\n## prompt -> full-resolution masks on the host (vit_b, random weights)", flush=True)
    ours_model, ref_model = _pair("vit_b", device, sa)
    graphs = SamPredictor(ours_model, device=device)
    eager = SamPredictor(ours_model, device=device, cuda_graphs=False)
    ref = sa.SamPredictor(ref_model)
    print(f"ours: decoder {graphs.decoder_path}, CUDA graphs {graphs._graphs is not None and graphs._graphs.capture}")
    feats = torch.randn(1, 256, 64, 64, device=device)
    for h, w in [(1024, 1024), (2048, 1536)]:
        size = graphs.transform.get_preprocess_shape(h, w, graphs.img_size)
        emb = ImageEmbedding(feats, (h, w), size)
        graphs.set_image_embedding(graphs.prepare_embedding(emb))  # as the widget's encode job: warms the first click
        eager.set_image_embedding(emb)
        ref.reset_image()
        ref.features, ref.original_size, ref.input_size, ref.is_image_set = feats, (h, w), size, True
        pt, lb = np.array([[w / 3, h / 3]]), np.array([1])
        t_first = _time(lambda pt=pt, lb=lb: graphs.predict(pt, lb), device)
        med = _interleaved({"graphs": lambda pt=pt, lb=lb: graphs.predict(pt, lb),
                            "eager": lambda pt=pt, lb=lb: eager.predict(pt, lb),
                            "ref": lambda pt=pt, lb=lb: ref.predict(pt, lb)}, runs, device)
        a, b = graphs.predict(pt, lb), ref.predict(pt, lb)
        agree = f"masks agree {(a[0] == b[0]).mean():.5f}, |score diff| {np.abs(a[1] - b[1]).max():.1e}"
        _row(f"point click {h}x{w} (CUDA graphs)", med["graphs"], med["ref"], f"first click {1e3 * t_first:.2f} ms; {agree}")
        _row(f"point click {h}x{w} (eager)", med["eager"], med["ref"])
        pts, lbs = np.array([[w / 3, h / 3], [w / 2, h / 2]]), np.array([1, 0])
        ref_kw = dict(point_coords=pts, point_labels=lbs, mask_input=b[2][:1], multimask_output=False)
        our_kw = dict(point_coords=pts, point_labels=lbs, mask_input=a[2][:1], multimask_output=False)
        med = _interleaved({"graphs": lambda kw=our_kw: graphs.predict(**kw), "eager": lambda kw=our_kw: eager.predict(**kw),
                            "ref": lambda kw=ref_kw: ref.predict(**kw)}, runs, device)
        _row(f"refining click {h}x{w} (CUDA graphs)", med["graphs"], med["ref"])
        _row(f"refining click {h}x{w} (eager)", med["eager"], med["ref"])


# ----------------------------------------------------------------------------- automatic
def automatic(device: torch.device, sa, repeats: int, image_path: Path | None, points: int) -> None:
    print(f"\n## segment everything, {points}x{points} points (total time of generate, image to masks)", flush=True)
    from napari_sam.weights.loading import load_model

    cases = []
    if image_path is not None and image_path.is_file():
        from PIL import Image

        real = np.array(Image.open(image_path).convert("RGB"))
        nano = load_model("nano_nuclei", device=device)
        own = automatic_defaults("nano_nuclei")
        sam = automatic_defaults(None)
        cases += [(f"nano_nuclei, its thresholds {tuple(own.values())}", nano, real, own),
                  (f"nano_nuclei, SAM's thresholds {tuple(sam.values())}", nano, real, sam)]
    else:
        print(f"# no image at {image_path}: the nano_nuclei rows are skipped")
    vit, _ = _pair("vit_b", device, sa)
    cases.append(("vit_b (random weights), SAM's thresholds", vit, _image(1024, 1024), automatic_defaults(None)))
    for name, model, image, thr in cases:
        kw = dict(points_per_side=points, **thr)
        ours = AutomaticMaskGenerator(model, device=device, **kw)
        ref = sa.SamAutomaticMaskGenerator(official_twin(model)[1], **kw)
        n: dict[str, int] = {}

        def run_ours(ours=ours, image=image, n=n):
            n["ours"] = len(ours.generate(image))

        def run_ref(ref=ref, image=image, n=n):
            n["ref"] = len(ref.generate(image))

        med = _interleaved({"ours": run_ours, "ref": run_ref}, repeats, device, warmup=1)
        _row(f"automatic: {name}", med["ours"], med["ref"],
             f"masks ours {n['ours']} official {n['ref']}; ours points_per_batch {ours.points_per_batch}")
        dev = device.type
        for side, res in (
            ("ours", timed(ours.generate, image, ours.predictor, "encode_batch",
                           ours.predictor.fast_decoder or model.mask_decoder, dev,
                           None if ours.predictor.fast_decoder else ["attend", "upscale_masks"])),
            ("official", timed(ref.generate, image, ref.predictor, "set_image", ref.predictor.model.mask_decoder, dev)),
        ):
            total, emb, _, _, gpu, dec = res
            print(f"    {side:9s} total {1e3 * total:8.1f} ms = encoder {1e3 * emb:7.1f} + decoder {1e3 * dec:7.1f} "
                  f"+ rest {1e3 * (total - emb - dec):7.1f}; GPU peak {gpu:.0f} MiB", flush=True)


def compiled_encoder(device: torch.device, sa, runs: int, batches: list[int]) -> None:
    """An experiment, not the default path: ``torch.compile`` of our image encoder (inductor's
    fusions of the LayerNorms, GELUs, residual sums and casts around the bf16 matrix products)."""
    print("\n## experiment: torch.compile(image_encoder), vit_b bf16", flush=True)
    ours_model, _ = _pair("vit_b", device, sa)
    p = SamPredictor(ours_model, device=device)
    img = _image(1024, 1024)
    x = torch.zeros(1, 3, 1024, 1024, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        flops = _flops(ours_model.image_encoder, x)
    ours_model.image_encoder = torch.compile(ours_model.image_encoder)
    for b in batches:
        t0 = time.perf_counter()
        p.encode_batch([img] * b, batch_size=b)
        _sync(device)
        compile_s = time.perf_counter() - t0
        med = _interleaved({"c": lambda b=b: p.encode_batch([img] * b, batch_size=b)}, runs, device, warmup=1)["c"]
        tflops = flops * b / med
        print(f"compiled encoder batch {b:2d}: {1e3 * med / b:7.2f} ms per image, {tflops / 1e12:.0f} TFLOP/s "
              f"({100 * tflops / PEAK_BF16['H200 spec dense']:.0f} % of spec peak); first call {compile_s:.1f} s", flush=True)


def _folded_rel_pos_forward(pad_v: bool):
    """An experiment: the image encoder's attention with the decomposed relative-position bias
    folded into the dot product (queries ``[q * scale, rel_h, rel_w]``, keys ``[k, onehot(row),
    onehot(col)]``): the same logits, no ``(L, L)`` bias mask, so flash kernels apply (``pad_v``:
    values zero-padded to the queries' width, as flash needs equal widths)."""
    import torch.nn.functional as F

    from napari_sam.models.image_encoder import rel_pos_factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        d = q.shape[-1]
        rel_h, rel_w = rel_pos_factors(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        L = H * W
        rows = torch.arange(L, device=x.device)
        onehot = torch.cat([F.one_hot(rows // W, H), F.one_hot(rows % W, W)], 1).to(q.dtype)  # (L, H + W)
        width = -(-(d + H + W) // 8) * 8
        extra = width - (d + H + W)
        qa = torch.cat([q * self.scale, rel_h.reshape(B, -1, L, H), rel_w.reshape(B, -1, L, W)], -1)
        ka = torch.cat([k, onehot.expand(B, self.num_heads, L, H + W)], -1)
        if extra:
            qa, ka = F.pad(qa, (0, extra)), F.pad(ka, (0, extra))
        va = F.pad(v, (0, width - d)) if pad_v else v
        o = F.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., :d]
        return self.proj(o.transpose(1, 2).reshape(B, H, W, C))

    return forward


def encoder_variants(device: torch.device, sa, runs: int) -> None:
    """An experiment: the encoder's attention variants, batch 1 and 8, bf16, and their embeddings
    against the default's."""
    from napari_sam.models import image_encoder

    print("\n## experiment: encoder attention variants (vit_b bf16, ms per image)", flush=True)
    ours_model, _ = _pair("vit_b", device, sa)
    p = SamPredictor(ours_model, device=device)
    img = _image(1024, 1024)
    default = image_encoder.Attention.forward
    ref = p.compute_embedding(img).features
    for name, fwd in (("default", default), ("folded, v padded", _folded_rel_pos_forward(True)),
                      ("folded", _folded_rel_pos_forward(False))):
        image_encoder.Attention.forward = fwd
        try:
            diff = (p.compute_embedding(img).features - ref).abs().max().item()
            cells = []
            for b in (1, 8):
                med = _interleaved({"x": lambda b=b: p.encode_batch([img] * b, batch_size=b)}, runs, device, warmup=1)["x"]
                cells.append(f"batch {b} {1e3 * med / b:7.2f}")
            print(f"{name:18s} {'   '.join(cells)}   max |emb - default| {diff:.2e}", flush=True)
        except Exception as exc:  # a kernel constraint, reported
            print(f"{name:18s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        finally:
            image_encoder.Attention.forward = default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny run counts (a dry run of the script)")
    ap.add_argument("--image", default=str(ROOT.parent / "shared/data/dsb2018/images" / DSB_IMAGE))
    ap.add_argument("--sections", default="first,encoder,click,automatic")
    args = ap.parse_args()
    device = torch.device(args.device)
    sa = official()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, python {sys.version.split()[0]}, pid {os.getpid()}")
    q = args.quick
    sections = args.sections.split(",")
    t0 = time.perf_counter()
    if "first" in sections:
        first_encode(device)
    if "encoder" in sections:
        encoder(device, sa, 2 if q else 20, [2] if q else [8, 16])
    if "click" in sections:
        clicks(device, sa, 2 if q else 50)
    if "automatic" in sections:
        automatic(device, sa, 1 if q else 3, Path(args.image), 4 if q else 32)
    if "variants" in sections:  # not in the default list: an experiment
        encoder_variants(device, sa, 2 if q else 10)
    if "compile" in sections:  # not in the default list: an experiment
        compiled_encoder(device, sa, 2 if q else 10, [1] if q else [1, 16])
    print(f"\n# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
