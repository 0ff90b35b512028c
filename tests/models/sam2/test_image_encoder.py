"""SAM 2.1's image encoder against Meta's (``../shared/reference/sam2``): Meta's ``ImageEncoder`` built
from the official config (hydra, as ``build_sam2`` does), random weights, its state dict loaded
strictly into ours; every output tensor compared. tiny and base_plus always (tiny at the real
1024x1024), small and large with ``NAPARI_SAM_SLOW=1``."""

from __future__ import annotations

import os

import pytest
import torch
from _sam2_reference import CONFIGS, randomize, sam2_package

from napari_sam.models.sam2.hiera import Hiera, MultiScaleBlock
from napari_sam.models.sam2.image_encoder import build_image_encoder

SLOW = not os.environ.get("NAPARI_SAM_SLOW")
TOL = 1e-5


def meta_image_encoder(arch: str, seed: int = 0) -> torch.nn.Module:
    """Meta's image encoder, instantiated from the ``image_encoder`` section of ``arch``'s config."""
    sam2_package()
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(config_name=CONFIGS[arch])
    torch.manual_seed(seed)
    return randomize(instantiate(cfg.model.image_encoder, _recursive_=True), seed).eval()


def ours_from(meta: torch.nn.Module, arch: str) -> torch.nn.Module:
    ours = build_image_encoder(arch).eval()
    assert list(ours.state_dict()) == list(meta.state_dict())
    ours.load_state_dict(meta.state_dict(), strict=True)
    return ours


def compare(ours: torch.nn.Module, meta: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Max abs and max relative (to the reference's largest magnitude) difference over all outputs."""
    with torch.inference_mode():
        a, b = ours(x), meta(x)
    assert a.keys() == b.keys() == {"vision_features", "vision_pos_enc", "backbone_fpn"}
    pairs = [(a["vision_features"], b["vision_features"])]
    for key in ("vision_pos_enc", "backbone_fpn"):
        assert len(a[key]) == len(b[key]) == 3
        pairs += list(zip(a[key], b[key], strict=True))
    worst_abs = worst_rel = 0.0
    for p, q in pairs:
        assert p.shape == q.shape and p.dtype == q.dtype
        diff = (p - q).abs().max().item()
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / q.abs().max().item())
        torch.testing.assert_close(p, q, atol=TOL, rtol=TOL)  # (fp32 rounding: the outputs reach ~10)
    print(f"max abs diff {worst_abs:.2e}, max rel diff {worst_rel:.2e}")
    return worst_abs, worst_rel


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("sam2.1_hiera_tiny", (1, 3, 1024, 1024)),
        ("sam2.1_hiera_tiny", (2, 3, 256, 384)),
        ("sam2.1_hiera_base_plus", (1, 3, 512, 512)),
        pytest.param(
            "sam2.1_hiera_small", (1, 3, 512, 512), marks=pytest.mark.skipif(SLOW, reason="NAPARI_SAM_SLOW")
        ),
        pytest.param(
            "sam2.1_hiera_large", (1, 3, 512, 512), marks=pytest.mark.skipif(SLOW, reason="NAPARI_SAM_SLOW")
        ),
        pytest.param(
            "sam2.1_hiera_base_plus",
            (1, 3, 1024, 1024),
            marks=pytest.mark.skipif(SLOW, reason="NAPARI_SAM_SLOW"),
        ),
    ],
)
def test_parity_with_meta(arch: str, shape: tuple[int, ...]) -> None:
    meta = meta_image_encoder(arch)
    ours = ours_from(meta, arch)
    compare(ours, meta, torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def test_channel_lists_match_official_configs() -> None:
    for arch in CONFIGS:
        meta = meta_image_encoder(arch)
        ours = build_image_encoder(arch)
        assert ours.trunk.channel_list == meta.trunk.channel_list
        assert [b.window_size for b in ours.trunk.blocks] == [b.window_size for b in meta.trunk.blocks]
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in meta.state_dict().items()
        }


def test_banded_blocks_equal_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A windowed block gives the same in bands (including a padded last band) as at once."""
    torch.manual_seed(0)
    block = randomize(MultiScaleBlock(32, 64, 2, q_stride=(2, 2), window_size=4)).eval()
    x = torch.randn(2, 20, 24, 32)
    with torch.inference_mode():
        whole = block._forward(x)
        monkeypatch.setattr("napari_sam.models.sam2.hiera.BAND_TOKENS", 2 * 8 * 24)
        banded = block(x)
    assert banded.shape == whole.shape == (2, 10, 12, 64)
    torch.testing.assert_close(banded, whole, atol=1e-6, rtol=1e-6)
    grads = []  # and under autograd, the same gradients
    for forward in (block._forward, block):
        block.zero_grad()
        forward(x).square().sum().backward()
        grads.append(block.attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def test_pos_embed_cache_follows_weights() -> None:
    trunk = Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,),
                  window_pos_embed_bkg_spatial_size=(7, 7)).eval()  # fmt: skip
    with torch.no_grad():
        first = trunk._get_pos_embed((16, 16)).clone()
        assert trunk._get_pos_embed((16, 16)) is trunk._get_pos_embed((16, 16))
        trunk.pos_embed.add_(1.0)
        torch.testing.assert_close(trunk._get_pos_embed((16, 16)), first + 1.0)
        trunk.load_state_dict({k: torch.zeros_like(v) for k, v in trunk.state_dict().items()})
        assert trunk._get_pos_embed((16, 16)).abs().max() == 0
    trunk.train()
    out = trunk._get_pos_embed((16, 16))
    assert out.requires_grad  # (not cached under autograd)
