"""The networks: official state-dict layout, numerical parity with segment_anything, TinyViT, the registry."""

from __future__ import annotations

import os
import time
from functools import partial

import pytest
import torch

from napari_sam.models.sam import Sam, available_archs, build_model, build_sam, infer_arch, register_arch


def _shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


# A shallow encoder (ViT-B head width 64, one windowed + one global block) keeps the parity tests fast;
# the prompt encoder and mask decoder are SAM's exactly.
SMALL_ENCODER = dict(embed_dim=192, depth=2, num_heads=3, global_attn_indexes=(1,), window_size=14)


def _official_small(reference, img_size: int):
    """The official Sam with :data:`SMALL_ENCODER` at ``img_size`` (as its _build_sam wires it)."""
    m = reference.modeling
    grid = img_size // 16
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            out_chans=256,
            **SMALL_ENCODER,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


def _ours_small(img_size: int) -> Sam:
    from napari_sam.models.image_encoder import ImageEncoderViT

    encoder = ImageEncoderViT(img_size=img_size, **SMALL_ENCODER)
    return build_sam(encoder, img_size=img_size, embedding_size=(img_size // 16, img_size // 16))


@pytest.fixture(scope="module")
def small_pair(reference):
    """(ours, official) small models at img_size 256 with the same random weights, loaded strictly."""
    official = _official_small(reference, 256)
    _randomize(official, seed=3)
    ours = _ours_small(256)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (zero-initialised rel-pos tables and biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and "norm" not in name and p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture()
def vit_b_pair(reference):
    """(ours, official) vit_b with the same random weights."""
    official = reference.sam_model_registry["vit_b"]().eval()
    _randomize(official)
    ours = build_model("vit_b")
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official


def test_vit_b_state_dict_matches_official(reference):
    with torch.device("meta"):
        official = reference.sam_model_registry["vit_b"]()
        ours = build_model("vit_b")
    assert _shapes(ours.state_dict()) == _shapes(official.state_dict())
    # pixel_mean / pixel_std are non-persistent buffers, as in the official
    assert "pixel_mean" not in ours.state_dict() and ours.pixel_mean.shape == (3, 1, 1)
    assert isinstance(ours, Sam) and ours.arch == "vit_b" and ours.img_size == 1024
    assert ours.embedding_size == (64, 64) and ours.mask_threshold == 0.0 and ours.image_format == "RGB"
    real = build_model("vit_t", img_size=512)  # sizes follow img_size
    assert real.embedding_size == (32, 32) and real.img_size == 512
    assert real.prompt_encoder.input_image_size == (512, 512) and real.prompt_encoder.mask_input_size == (
        128,
        128,
    )
    assert real.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert real.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375])


@pytest.mark.parametrize("arch", ["vit_l", "vit_h"])
def test_large_state_dicts_match_official(reference, arch):
    with torch.device("meta"):
        official = reference.sam_model_registry[arch]()
        ours = build_model(arch)
    assert _shapes(ours.state_dict()) == _shapes(official.state_dict())
    assert infer_arch(official.state_dict()) == arch


def test_encoder_parity_1024(reference):
    """The full 1024 input: a windowed block (64 -> 70 padding) and a global 64x64 block."""
    from napari_sam.models.image_encoder import ImageEncoderViT

    kw = dict(img_size=1024, **SMALL_ENCODER)
    official = reference.modeling.ImageEncoderViT(
        **kw, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True
    ).eval()
    _randomize(official, seed=1)
    ours = ImageEncoderViT(**kw).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), official(x)
    assert a.shape == (1, 256, 64, 64)
    diff = (a - b).abs().max().item()
    assert diff < 1e-3 and diff / b.abs().max().item() < 1e-4, diff


@pytest.mark.parametrize("img_size", [256, 1024])
def test_encoder_inference_bands_equal_training_path(reference, img_size):
    """CPU inference runs the blocks in bands of rows (windows, MLP chunks); with autograd on, the
    plain whole-tensor path runs. Both give the official numbers, for a batch of two, with a last
    band shorter than a window (16 = 14 + 2 rows at 256) and padded window columns."""
    from napari_sam.models.image_encoder import ImageEncoderViT

    kw = dict(img_size=img_size, **SMALL_ENCODER)
    official = reference.modeling.ImageEncoderViT(
        **kw, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True
    ).eval()
    _randomize(official, seed=2)
    ours = ImageEncoderViT(**kw).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        banded, ref = ours(x), official(x)
    plain = ours(x.requires_grad_())
    assert plain.requires_grad
    for a in (banded, plain.detach()):
        diff = (a - ref).abs().max().item()
        assert diff / ref.abs().max().item() < 1e-5, diff


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("NAPARI_SAM_SLOW"),
    reason="full ViT-B at 1024 (~1 min on 2 cores): set NAPARI_SAM_SLOW=1",
)
def test_vit_b_encoder_parity_1024(vit_b_pair):
    ours, official = vit_b_pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t0 = time.perf_counter()
        a = ours.image_encoder(x)
        t1 = time.perf_counter()
        b = official.image_encoder(x)
        t2 = time.perf_counter()
    print(f"vit_b 1024 encoder: ours {t1 - t0:.2f} s, official {t2 - t1:.2f} s")
    assert a.shape == (1, 256, 64, 64)
    diff = (a - b).abs().max().item()
    assert diff < 1e-3 and diff / b.abs().max().item() < 1e-4, diff


def _prompt_cases(img_size: int):
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(3, 4, 2, generator=g) * img_size
    labels = torch.tensor([[1, 0, 1, -1], [1, 1, 0, 0], [0, 1, -1, -1]])
    boxes = torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 50.0, 60.0], [100.0, 30.0, 250.0, 255.0]])
    h = img_size // 4
    masks = torch.randn(3, 1, h, h, generator=g) * 4
    return [
        dict(points=(pts[:1, :1], labels[:1, :1]), boxes=None, masks=None),
        dict(points=(pts, labels), boxes=None, masks=None),
        dict(points=None, boxes=boxes, masks=None),
        dict(points=(pts, labels), boxes=boxes, masks=None),
        dict(points=(pts, labels), boxes=None, masks=masks),
        dict(points=None, boxes=boxes[:1], masks=masks[:1]),
    ]


def test_prompt_encoder_and_decoder_parity(small_pair):
    """Image embedding shared (batch 1) by B prompts, as the predictor uses it."""
    ours, official = small_pair
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb_a, emb_b = ours.image_encoder(x), official.image_encoder(x)
        torch.testing.assert_close(emb_a, emb_b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.prompt_encoder.get_dense_pe(), official.prompt_encoder.get_dense_pe())
        for case in _prompt_cases(256):
            sa, da = ours.prompt_encoder(**case)
            sb, db = official.prompt_encoder(**case)
            torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(da, db, atol=1e-5, rtol=1e-5)
            for multimask in (True, False):
                ma, ia = ours.mask_decoder(emb_b, ours.prompt_encoder.get_dense_pe(), sa, da, multimask)
                mb, ib = official.mask_decoder(
                    emb_b, official.prompt_encoder.get_dense_pe(), sb, db, multimask
                )
                assert ma.shape == (sa.shape[0], 3 if multimask else 1, 64, 64)
                torch.testing.assert_close(ma, mb, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(ia, ib, atol=1e-4, rtol=1e-4)


def test_sam_forward_matches_official(small_pair):
    ours, official = small_pair
    g = torch.Generator().manual_seed(6)
    batch = [
        {
            "image": torch.rand(3, 192, 256, generator=g) * 255,
            "original_size": (300, 400),
            "point_coords": torch.tensor([[[50.0, 60.0], [120.0, 100.0]]]),
            "point_labels": torch.tensor([[1, 0]]),
        }
    ]
    a, b = ours(batch, True)[0], official(batch, True)[0]
    torch.testing.assert_close(a["low_res_logits"], b["low_res_logits"], atol=1e-4, rtol=1e-4)
    assert a["masks"].shape == (1, 3, 300, 400)


def test_box_corner_labels_match_box_prompt():
    """Labels 2/3 on points encode box corners like a box prompt does."""
    model = build_model("vit_b", img_size=256)
    _randomize(model.prompt_encoder, seed=7)
    box = torch.tensor([[10.0, 20.0, 100.0, 120.0]])
    pe = model.prompt_encoder
    with torch.no_grad():
        from_box = pe._embed_boxes(box)
        from_pts = pe._embed_points(box.reshape(1, 2, 2), torch.tensor([[2, 3]]), pad=False)
    torch.testing.assert_close(from_box, from_pts)


def test_tiny_vit_shapes_and_parameters():
    model = build_model("vit_t")
    assert model.arch == "vit_t" and model.embedding_size == (64, 64) and model.img_size == 1024
    # MobileSAM: 10.13M parameters in all (TinyViT-5M encoder incl. its unused ImageNet head: 6.07M)
    assert sum(p.numel() for p in model.parameters()) == 10_130_092
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 6_065_532
    sd = model.state_dict()
    for key, shape in {
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.patch_embed.seq.2.bn.running_var": (64,),
        "image_encoder.layers.0.blocks.0.conv2.c.weight": (256, 1, 3, 3),
        "image_encoder.layers.0.downsample.conv1.c.weight": (128, 64, 1, 1),
        "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
        "image_encoder.layers.1.blocks.0.attn.qkv.weight": (384, 128),
        "image_encoder.layers.1.blocks.0.local_conv.c.weight": (128, 1, 3, 3),
        "image_encoder.layers.1.blocks.0.mlp.norm.weight": (128,),
        "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
        "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
        "image_encoder.layers.3.blocks.1.mlp.fc2.weight": (320, 1280),
        "image_encoder.norm_head.weight": (320,),
        "image_encoder.head.weight": (1000, 320),
        "image_encoder.neck.0.weight": (256, 320, 1, 1),
        "image_encoder.neck.3.bias": (256,),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("attention_bias_idxs" in k for k in sd)  # non-persistent, as in MobileSAM
    # a checkpoint that carries it anyway still loads strictly
    sd["image_encoder.layers.1.blocks.0.attn.attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model.image_encoder(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 256, 64, 64) and torch.isfinite(out).all()


def test_tiny_vit_attention_matches_naive():
    from napari_sam.models.tiny_vit import Attention

    attn = Attention(64, 16, 4, attn_ratio=1, resolution=(7, 7))
    _randomize(attn, seed=8)
    x = torch.randn(3, 49, 64)
    with torch.no_grad():
        qkv = attn.qkv(attn.norm(x)).view(3, 49, 4, -1)
        q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split([16, 16, 16], dim=3))
        w = (q @ k.transpose(-2, -1)) * attn.scale + attn.attention_biases[:, attn.attention_bias_idxs]
        ref = attn.proj((w.softmax(-1) @ v).transpose(1, 2).reshape(3, 49, 64))
        torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_infer_arch_and_registry():
    with torch.device("meta"):
        for arch in ("vit_b", "vit_l", "vit_h", "vit_t"):
            assert infer_arch(build_model(arch).state_dict()) == arch
    assert {"vit_b", "vit_l", "vit_h", "vit_t"} <= set(available_archs())
    with pytest.raises(ValueError, match="cannot infer"):
        infer_arch({"backbone.conv1.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vit_x")


def test_register_custom_arch_with_build_sam():
    from napari_sam.models import sam as sam_module

    class Enc(torch.nn.Module):
        img_size = 64

        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 256, 8, 8)

        def forward(self, x):
            return self.stem(x)

    def builder() -> Sam:
        return build_sam(Enc(), img_size=64, embedding_size=(8, 8))

    register_arch("_test_tiny", builder, matches=lambda sd: "image_encoder.stem.weight" in sd)
    try:
        model = build_model("_test_tiny")
        assert model.arch == "_test_tiny" and model.embedding_size == (8, 8)
        assert infer_arch(model.state_dict()) == "_test_tiny"
        emb = model.image_encoder(torch.randn(1, 3, 64, 64))
        sparse, dense = model.prompt_encoder(
            (torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]])), None, None
        )
        masks, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        assert masks.shape == (1, 3, 32, 32) and iou.shape == (1, 3)
    finally:
        sam_module._ARCHS.pop("_test_tiny", None)


def test_to_tokens_transposes_adds_and_leaves_the_input_alone():
    """``common.to_tokens``: ``(B, C, h, w)`` -> contiguous ``(B, h*w, C)`` equal to
    ``flatten(2).transpose(1, 2)`` (plus a per-channel vector), for standard and channels-last
    inputs; the input is never changed (a channels-last input is already a token layout)."""
    from napari_sam.models.common import to_tokens

    torch.manual_seed(0)
    vec = torch.randn(1, 1, 32)
    for x in (torch.randn(2, 32, 8, 6), torch.randn(2, 32, 8, 6).to(memory_format=torch.channels_last)):
        before = x.clone()
        want = x.flatten(2).transpose(1, 2)
        t = to_tokens(x)
        assert t.is_contiguous() and torch.equal(t, want)
        t = to_tokens(x, vec)
        assert t.is_contiguous() and torch.equal(t, (x + vec.reshape(1, 32, 1, 1)).flatten(2).transpose(1, 2))
        assert torch.equal(x, before)


def test_plain_decoder_in_two_steps_equals_predict_masks():
    """``MaskDecoder.attend`` + ``upscale_masks`` (how segment everything decodes on a GPU: only
    the prompts with a mask worth keeping are upscaled) equal ``predict_masks``; a shared image
    stays batch 1 into the transformer; an empty selection gives no masks."""
    torch.manual_seed(0)
    model = build_model("nano").eval()
    dec, enc = model.mask_decoder, model.prompt_encoder
    emb, pe = torch.randn(1, 128, 64, 64), enc.get_dense_pe()
    with torch.no_grad():
        sparse, dense = enc((torch.rand(5, 1, 2) * 512, torch.ones(5, 1)), None, None)
        masks, iou = dec.predict_masks(emb, pe, sparse, dense)
        hs, src = dec.attend(emb, pe, sparse, dense)
        rows = torch.tensor([1, 3])
        torch.testing.assert_close(dec.upscale_masks(hs[rows], src[rows]), masks[rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dec.iou_prediction_head(hs[:, 0]), iou)
        assert dec.upscale_masks(hs[:0], src[:0]).shape == (0, 4, 256, 256)
        # the same prompts with the image copied per prompt (no broadcast): the same masks
        copied, _ = dec.predict_masks(emb.expand(5, -1, -1, -1).clone(), pe, sparse, dense.clone())
    torch.testing.assert_close(copied, masks, rtol=1e-4, atol=1e-4)
