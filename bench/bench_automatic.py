"""Automatic mask generation: ours vs the official ``SamAutomaticMaskGenerator``, same process.

Same weights (the official modules are loaded with our model's state dict; the image encoder module
is shared), same image, same parameters (defaults: points_per_side=32, pred_iou_thresh=0.88,
stability_score_thresh=0.95). Prints, per implementation, the median total time, the median time
after the embedding (encoder time measured by wrapping the embedding call), the number of masks
and the peak resident memory above the starting point (sampled every 5 ms), then the ratios.

    python bench/bench_automatic.py                        # nano (nano_nuclei if available), dsb image
    python bench/bench_automatic.py --model vit_b --device cuda --repeats 3
    python bench/bench_automatic.py --model path/to/checkpoint.pt --image some.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DEFAULT_IMAGE = ROOT.parent / "shared/data/dsb2018/images"


def load_ours(name: str, device: str):
    """Our model: a registry name / checkpoint via ``load_model``, or an architecture with random weights."""
    from napari_sam.models import build_model

    try:
        from napari_sam.weights.loading import load_model

        model = load_model(name, device=device)
        return model, f"{name} (trained weights)"
    except Exception as exc:  # not trained/downloadable here: same architecture, random weights
        arch = "nano" if name.startswith("nano") else name
        torch.manual_seed(0)
        print(f"# {name}: no weights ({type(exc).__name__}); using {arch} with random weights (seed 0)")
        return build_model(arch).to(device).eval(), f"{arch} (random weights)"


def official_twin(model):
    """The official ``Sam`` with the same weights (the image encoder module itself is shared)."""
    from _reference import official

    sa = official()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    pe, md = model.prompt_encoder, model.mask_decoder
    t = md.transformer
    twin = Sam(
        image_encoder=model.image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=pe.embed_dim, image_embedding_size=tuple(pe.image_embedding_size),
            input_image_size=tuple(pe.input_image_size), mask_in_chans=pe.mask_downscaling[0].out_channels * 4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=md.transformer_dim, iou_head_hidden_dim=md.iou_prediction_head.layers[0].out_features,
            transformer=TwoWayTransformer(
                depth=len(t.layers), embedding_dim=md.transformer_dim,
                mlp_dim=t.layers[0].mlp.lin1.out_features, num_heads=t.layers[0].self_attn.num_heads,
            ),
        ),
        pixel_mean=model.pixel_mean.flatten().tolist(), pixel_std=model.pixel_std.flatten().tolist(),
    )
    twin.load_state_dict(model.state_dict())
    return sa, twin.to(model.pixel_mean.device).eval()


class PeakRSS:
    """Peak resident memory (MiB) above the value at entry, sampled every 5 ms in a thread."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, False
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.mib = (self.peak - self.base) / 2**20


def _timer(owner, attr, spent: list, i: int, device: str):
    orig = getattr(owner, attr)

    def wrapped(*a, **k):
        t = time.perf_counter()
        out = orig(*a, **k)
        if device == "cuda":
            torch.cuda.synchronize()
        spent[i] += time.perf_counter() - t
        return out

    setattr(owner, attr, wrapped)
    return orig


def timed(fn, image, embed_owner, embed_attr, decoder, device, dec_attrs=None):
    """Run ``fn(image)``; return (total s, embedding s, n masks, peak MiB, GPU peak MiB, decoder s).

    Decoder time is the time spent in the decoder's ``forward`` (the official's, ours on a GPU) or
    ``predict_filtered`` (ours on a CPU: the fast path decodes the masks that pass
    ``pred_iou_thresh``, see ``FastMaskDecoder.predict_filtered``).
    """
    spent = [0.0, 0.0]
    orig = _timer(embed_owner, embed_attr, spent, 0, device)
    if dec_attrs is None:
        dec_attrs = ["predict_filtered" if hasattr(decoder, "predict_filtered") else "forward"]
    for dec_attr in dec_attrs:
        _timer(decoder, dec_attr, spent, 1, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            n = len(fn(image))
            if device == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
    finally:
        setattr(embed_owner, embed_attr, orig)
        for dec_attr in dec_attrs:
            delattr(decoder, dec_attr)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return total, spent[0], n, mem.mib, gpu, spent[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano_nuclei", help="registry name, checkpoint path or arch")
    ap.add_argument("--image", default="", help="image path (default: a 520x696 dsb2018 image)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image

    from napari_sam.automatic.generator import AutomaticMaskGenerator

    path = Path(args.image) if args.image else sorted(DEFAULT_IMAGE.glob("07fb37aafa66*.png"))[0]
    image = np.array(Image.open(path).convert("RGB"))
    model, desc = load_ours(args.model, args.device)
    sa, twin = official_twin(model)
    kw = dict(
        points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
    )
    ours = AutomaticMaskGenerator(model, device=args.device, **kw)
    ref = sa.SamAutomaticMaskGenerator(twin, **kw)
    print(f"# {desc}, image {path.name} {image.shape[:2]}, device {args.device}, threads {args.threads}, {kw}")
    rows = {"official": [], "ours": []}
    with torch.inference_mode():
        for r in range(args.repeats):
            for name in ("ours", "official"):
                if name == "ours":
                    res = timed(ours.generate, image, ours.predictor, "encode_batch",
                                ours.predictor.fast_decoder or model.mask_decoder, args.device)
                else:
                    res = timed(ref.generate, image, ref.predictor, "set_image", twin.mask_decoder, args.device)
                rows[name].append(res)
                print(f"run {r} {name:9s} total {res[0]:7.2f} s  embedding {res[1]:6.2f} s  after {res[0] - res[1]:7.2f} s"
                      f" (decoder {res[5]:7.2f} s, rest {res[0] - res[1] - res[5]:6.2f} s)  masks {res[2]:4d}  peak +{res[3]:7.1f} MiB"
                      f"  gpu {res[4]:.0f} MiB", flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(6)] for k, v in rows.items()}
    for k, (tot, emb, n, mib, gpu, dec) in med.items():
        print(f"{k:9s} median total {tot:7.2f} s  after embedding {tot - emb:7.2f} s  (decoder {dec:7.2f} s, "
              f"rest {tot - emb - dec:6.2f} s)  masks {n:.0f}  peak +{mib:.0f} MiB  gpu {gpu:.0f} MiB")
    o, u = med["official"], med["ours"]
    rest_o, rest_u = o[0] - o[1] - o[5], u[0] - u[1] - u[5]
    print(f"ratio official/ours: total {o[0] / u[0]:.2f}x  after embedding {(o[0] - o[1]) / (u[0] - u[1]):.2f}x  "
          f"outside encoder+decoder {rest_o / max(rest_u, 1e-9):.1f}x  peak memory {o[3] / max(u[3], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
