"""SAM 2.1's memory parts, ours vs Meta's, on the CPU: what one propagation step runs.

    PYTHONPATH=src:tests python bench/bench_sam2_memory.py [--repeats 5] [--threads 2]

- memory attention: 4 layers, 64x64 current tokens attending to 7 memory frames of 64x64 tokens
  plus 16 object-pointer tokens (batch 1);
- memory encoder: (1, 256, 64, 64) features and a (1, 1, 1024, 1024) mask;
- the rotary encoding alone (queries and the 7 frames' keys of one cross-attention).

Meta's modules are built from the official sam2.1_hiera_tiny config (all four configs share these
parts), with random weights loaded strictly into ours. Ours and Meta's run alternately (after a
warm-up each), so that load from other processes hits both alike; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _sam2_reference as ref
import torch
from test_memory_modules import memory_inputs, meta_part, ours_like

from napari_sam.models.sam2.memory_attention import rotate_


def alternate(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(what: str, med: dict[str, float]) -> None:
    ours, meta = med["ours"], med["meta"]
    print(f"{what:<44} ours {ours * 1e3:9.1f} ms   Meta {meta * 1e3:9.1f} ms   x{meta / ours:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref.sam2_package()
    from sam2.modeling.position_encoding import apply_rotary_enc

    meta_ma = meta_part("memory_attention")
    ours_ma = ours_like(meta_ma, "memory_attention")
    meta_me = meta_part("memory_encoder")
    ours_me = ours_like(meta_me, "memory_encoder")
    inputs = memory_inputs(batch=1, side=64, frames=7, ptr_tokens=16)
    g = torch.Generator().manual_seed(0)
    pix_feat, mask = torch.randn(1, 256, 64, 64, generator=g), torch.randn(1, 1, 1024, 1024, generator=g)

    attn = ours_ma.layers[0].cross_attn_image
    n = 64 * 64
    q = torch.randn(1, 1, n, 256, generator=g)
    k = torch.randn(1, 1, 7 * n + 16, 256, generator=g)
    freqs_cis = meta_ma.layers[0].cross_attn_image.freqs_cis

    def ours_rope() -> None:
        qq, kk = q.clone(), k.clone()  # (as Meta's: a copy that the projections would make)
        cis = attn.rope_table(n, q.device)
        rotate_(qq, cis)
        rotate_(kk[:, :, : 7 * n].unflatten(2, (-1, n)), cis)

    def meta_rope() -> None:
        kk = k.clone()  # Meta rotates its freshly projected keys in place
        _, kk[:, :, : 7 * n] = apply_rotary_enc(
            q, kk[:, :, : 7 * n], freqs_cis=freqs_cis, repeat_freqs_k=True
        )

    with torch.inference_mode():
        out_ours, out_meta = ours_ma(**inputs), meta_ma(**inputs)
        d = (out_ours - out_meta).abs().max().item()
        print(f"memory attention parity: max abs {d:.2e}, rel {d / out_meta.abs().max().item():.2e}")
        print(f"threads {torch.get_num_threads()}, median of {args.repeats}, inference_mode, float32")
        report(
            "memory attention (7 frames + 16 pointers)",
            alternate({"ours": lambda: ours_ma(**inputs), "meta": lambda: meta_ma(**inputs)}, args.repeats),
        )
        report(
            "memory encoder (1024 px mask)",
            alternate(
                {"ours": lambda: ours_me(pix_feat, mask), "meta": lambda: meta_me(pix_feat, mask)},
                max(args.repeats, 10),
            ),
        )
        report(
            "RoPE of one cross-attention",
            alternate({"ours": ours_rope, "meta": meta_rope}, max(args.repeats, 10)),
        )


if __name__ == "__main__":
    main()
