"""SAM 2.1's memory encoder and memory attention against Meta's (``../shared/reference/sam2``):
Meta's modules built from the official configs, given random weights, loaded strictly into ours,
give the same outputs (to float32 rounding)."""

from __future__ import annotations

import _sam2_reference as ref
import pytest
import torch

from napari_sam.models.sam2.memory_attention import RoPEAttention, build_memory_attention
from napari_sam.models.sam2.memory_encoder import build_memory_encoder

TOL = 1e-5  # max |ours - Meta| relative to max |Meta|


def meta_part(part: str, arch: str = "sam2.1_hiera_tiny", seed: int = 0) -> torch.nn.Module:
    """Meta's ``model.<part>`` of ``arch``'s official config, instantiated as its builder does, with
    noise on every parameter, in eval mode."""
    ref.sam2_package()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ref.REFERENCE_DIR / "sam2" / ref.CONFIGS[arch])
    torch.manual_seed(seed)
    return ref.randomize(instantiate(cfg.model[part], _recursive_=True), seed).eval()


def ours_like(meta: torch.nn.Module, part: str) -> torch.nn.Module:
    ours = {"memory_attention": build_memory_attention, "memory_encoder": build_memory_encoder}[part]()
    ours.load_state_dict(meta.state_dict(), strict=True)
    return ours.eval()


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """``(max abs diff, max abs diff / max |theirs|)``."""
    d = (ours - theirs).abs().max().item()
    return d, d / theirs.abs().max().item()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    d, r = rel_diff(ours, theirs)
    print(f"{what}: max abs {d:.2e}, rel {r:.2e}")
    assert r < TOL, f"{what}: max abs {d:.3g}, relative {r:.3g}"


@pytest.mark.parametrize("arch", list(ref.CONFIGS))
@pytest.mark.parametrize("part", ["memory_attention", "memory_encoder"])
def test_state_dict_keys_match_each_config(arch: str, part: str) -> None:
    ref.sam2_package()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ref.REFERENCE_DIR / "sam2" / ref.CONFIGS[arch])
    meta = instantiate(cfg.model[part], _recursive_=True)
    build = {"memory_attention": build_memory_attention, "memory_encoder": build_memory_encoder}[part]
    ours = build(arch)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in meta.state_dict().items()
    }
    ours.load_state_dict(meta.state_dict(), strict=True)


def test_unknown_arch() -> None:
    with pytest.raises(KeyError):
        build_memory_attention("sam2_hiera_huge")


@torch.inference_mode()
@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
def test_memory_encoder_matches_meta(skip_mask_sigmoid: bool) -> None:
    meta = meta_part("memory_encoder")
    ours = ours_like(meta, "memory_encoder")
    g = torch.Generator().manual_seed(1)
    pix_feat = torch.randn(2, 256, 64, 64, generator=g)
    masks = torch.randn(2, 1, 1024, 1024, generator=g) * 8
    if skip_mask_sigmoid:
        masks = (masks > 0).float()
    want = meta(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    got = ours(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    assert set(got) == set(want) == {"vision_features", "vision_pos_enc"}
    assert_close(
        got["vision_features"], want["vision_features"], f"memory encoder (skip sigmoid {skip_mask_sigmoid})"
    )
    assert len(got["vision_pos_enc"]) == 1
    assert_close(got["vision_pos_enc"][0], want["vision_pos_enc"][0], "memory encoder position encoding")


@torch.inference_mode()
@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("num_k_exclude_rope", [0, 4])
def test_rope_attention_matches_meta(frames: int, num_k_exclude_rope: int) -> None:
    """The cross-attention of the memory attention's first layer: 64x64 queries, ``frames`` memories
    of 64x64 tokens (64 channels) plus ``num_k_exclude_rope`` unrotated tokens."""
    meta = meta_part("memory_attention").layers[0].cross_attn_image
    ours = RoPEAttention(256, 1, kv_in_dim=64, rope_k_repeat=True, feat_sizes=(64, 64), dropout=0.1)
    ours.load_state_dict(meta.state_dict(), strict=True)
    ours.eval()
    g = torch.Generator().manual_seed(2)
    n = 64 * 64
    q = torch.randn(2, n, 256, generator=g)
    k = torch.randn(2, frames * n + num_k_exclude_rope, 64, generator=g)
    v = torch.randn(2, frames * n + num_k_exclude_rope, 64, generator=g)
    kw = {"num_k_exclude_rope": num_k_exclude_rope} if num_k_exclude_rope else {}
    want = meta(q, k.clone(), v, **kw)
    got = ours(q, k, v, num_k_exclude_rope=num_k_exclude_rope)
    assert_close(got, want, f"RoPEAttention ({frames} frames, {num_k_exclude_rope} unrotated)")


@torch.inference_mode()
@pytest.mark.parametrize("side", [64, 24])
def test_rope_self_attention_matches_meta(side: int) -> None:
    """Self-attention (no key repeat), on the configured 64x64 grid and on another square grid
    (where both recompute the rotations)."""
    meta = meta_part("memory_attention").layers[1].self_attn
    ours = RoPEAttention(256, 1, feat_sizes=(64, 64), dropout=0.1)
    ours.load_state_dict(meta.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, side * side, 256, generator=torch.Generator().manual_seed(3))
    assert_close(ours(x, x, x), meta(x, x, x), f"RoPE self-attention ({side}x{side})")


def memory_inputs(batch: int, side: int, frames: int, ptr_tokens: int, seed: int = 4) -> dict:
    """Sequence-first inputs as SAM2Base gives them (``curr`` and ``curr_pos`` as one-element lists)."""
    g = torch.Generator().manual_seed(seed)
    n, m = side * side, frames * side * side + ptr_tokens
    return dict(
        curr=[torch.randn(n, batch, 256, generator=g)],
        curr_pos=[torch.randn(n, batch, 256, generator=g)],
        memory=torch.randn(m, batch, 64, generator=g),
        memory_pos=torch.randn(m, batch, 64, generator=g),
        num_obj_ptr_tokens=ptr_tokens,
    )


@torch.inference_mode()
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("ptr_tokens", [0, 16])
def test_memory_attention_matches_meta(batch: int, frames: int, ptr_tokens: int) -> None:
    """The four layers on a 32x32 grid (keeps the test short; the 64x64 grid is covered below and
    by the RoPE tests), ``frames`` memories and ``ptr_tokens`` object-pointer tokens."""
    meta = meta_part("memory_attention")
    ours = ours_like(meta, "memory_attention")
    inputs = memory_inputs(batch, 32, frames, ptr_tokens)
    got, want = ours(**inputs), meta(**inputs)
    assert_close(
        got, want, f"memory attention (B={batch}, {frames} frames, {ptr_tokens} pointer tokens, 32x32)"
    )


@torch.inference_mode()
def test_memory_attention_full_grid_matches_meta() -> None:
    meta = meta_part("memory_attention")
    ours = ours_like(meta, "memory_attention")
    inputs = memory_inputs(1, 64, 2, 16)
    inputs["curr"], inputs["curr_pos"] = inputs["curr"][0], inputs["curr_pos"][0]  # plain tensors work too
    assert_close(ours(**inputs), meta(**inputs), "memory attention (B=1, 2 frames, 16 pointer tokens, 64x64)")


def test_memory_attention_trains() -> None:
    """Training mode runs (dropout active) and gradients reach the rotated keys' projection."""
    model = build_memory_attention().train()
    inputs = memory_inputs(2, 8, 2, 4)
    inputs["memory"].requires_grad_(True)
    model(**inputs).square().mean().backward()
    assert model.layers[0].cross_attn_image.k_proj.weight.grad.abs().sum() > 0
    assert inputs["memory"].grad.abs().sum() > 0
