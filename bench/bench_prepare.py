"""When to prepare an image for the decoder: one prompt call per image vs several.

``SamPredictor`` prepares an image's prompt-independent decoder work (``MaskDecoder.prepare_image``)
on the image's second prompt call, or on the first when it has ``PREPARE_FOR_PROMPTS`` prompts or
more. This prints, per model and batch size, the milliseconds of the first prompt call on a fresh
image (a volume's propagation step: boxes with the previous slice's masks), of the second and of
the third, with that policy ("policy") and with preparing on every image's first call ("always");
random weights and embeddings (speed does not depend on them), runs interleaved in one process,
medians.

    python bench/bench_prepare.py [--runs 15] [--archs vit_b nano]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_sam import predictor as predictor_module
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor
from napari_sam.models.sam import build_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--archs", nargs="+", default=["vit_b", "nano"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    policy = predictor_module.PREPARE_FOR_PROMPTS
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, policy: prepare from the 2nd call or {policy} prompts")
    print("| model | prompts per call | 1st call on an image: policy | always | 2nd call: policy | always | 3rd: policy | always |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch in args.archs:
        torch.manual_seed(0)
        p = SamPredictor(build_model(arch).eval(), device="cpu")
        c, (h, w) = p.model.mask_decoder.transformer_dim, p.embedding_size
        size = p.img_size
        for b in (1, 2, 3, 4, 8):
            boxes = np.array([[0.2, 0.25, 0.45, 0.5]] * b) * size
            masks = np.random.default_rng(0).normal(size=(b, 1, *p.mask_input_size)).astype(np.float32)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.runs):
                for name, threshold in (("policy", policy), ("always", 1)):
                    predictor_module.PREPARE_FOR_PROMPTS = threshold
                    p.set_image_embedding(ImageEmbedding(torch.randn(1, c, h, w), (size, size), (size, size)))
                    for call in ("1st", "2nd", "3rd"):
                        t0 = time.perf_counter()
                        p.predict_batch(boxes=boxes, mask_input=masks)
                        times.setdefault((call, name), []).append(time.perf_counter() - t0)
            predictor_module.PREPARE_FOR_PROMPTS = policy
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            cells = " | ".join(f"{med[call, name]:.1f}" for call in ("1st", "2nd", "3rd") for name in ("policy", "always"))
            print(f"| {arch} | {b} | {cells} |")


if __name__ == "__main__":
    main()
