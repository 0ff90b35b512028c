"""The decoder's first upscaling map through the two-way layers' low-rank updates equals the map
applied to the final image tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_sam.models.fast import FastMaskDecoder, upscale_reassociation
from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.transformer import TwoWayTransformer

C = 128  # wide enough that attention goes through the prompt tokens (asymmetric_attention.worth_it)


def _decoder(depth: int, width: int = C) -> MaskDecoder:
    torch.manual_seed(depth)
    dec = MaskDecoder(
        transformer_dim=width,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=width, num_heads=4, mlp_dim=128),
    ).eval()
    for name, p in dec.named_parameters():  # LayerNorm gains and biases away from 1 and 0
        if "norm" in name:
            torch.nn.init.normal_(p, mean=1.0 if name.endswith("weight") else 0.0, std=0.3)
    return dec


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_first_upscale_equals_the_map_of_the_final_tokens(depth: int, batch: int) -> None:
    dec = _decoder(depth)
    fast = FastMaskDecoder(dec)
    emb, pe = torch.randn(1, C, 16, 16), torch.randn(1, C, 16, 16)
    tokens = torch.randn(batch, 8, C)
    with torch.inference_mode():
        prep = fast.prepare_image(emb, pe, torch.zeros(1, C, 16, 16))
        trace: list = []
        _, keys = fast.transformer.forward(None, None, tokens, prep.image, trace=trace)
        assert len(trace) == depth and all(trace)
        assert trace[0].p.shape == (batch, 256, 4 * 8) and trace[0].mean.shape == (batch, 256, 1)
        got = upscale_reassociation.first_upscale(prep.upscale, trace)
        conv1 = dec.output_upscaling[0]
        w = conv1.weight.permute(2, 3, 1, 0).reshape(-1, C)  # ConvTranspose2d as (4 * out, in), rows (a, b, out)
        ref = F.linear(keys, w, conv1.bias.repeat(4))
    assert got.shape == (batch, 256, C)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("width", [C, 64])
def test_decoder_masks_with_and_without_the_prepared_image(multimask: bool, width: int) -> None:
    """Decoding with the prepared image (reassociated upscaling) gives the plain decoder's masks;
    so does the filtered decoding that the automatic masks use. Width 64: the second layer's
    attention is computed plainly (no low-rank update recorded), the upscaling falls back to the
    final tokens."""
    dec = _decoder(2, width)
    fast = FastMaskDecoder(dec)
    emb, pe = torch.randn(1, width, 16, 16), torch.randn(1, width, 16, 16)
    sparse, dense = torch.randn(5, 3, width), torch.randn(1, width, 16, 16).expand(5, -1, -1, -1)
    with torch.inference_mode():
        plain, iou = dec(emb, pe, sparse, dense, multimask)  # the plain modules
        prep = fast.prepare_image(emb, pe, dense)
        got, iou_fast = fast(emb, pe, sparse, dense, multimask, prepared=prep)
        ious, keep, kept = fast.predict_filtered(emb, pe, sparse, dense, multimask, float(iou.median()), prep)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou_fast, iou, rtol=1e-4, atol=1e-5)
    assert 0 < int(keep.sum()) < keep.numel()
    torch.testing.assert_close(kept, plain[keep], rtol=1e-4, atol=1e-4)
