"""The second two-way layer's attentions through the first layer's low-rank update of the image
equal the same attentions on the materialised image tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_sam.models.fast import FastMaskDecoder, update_projection
from napari_sam.models.fast.transformer import block
from napari_sam.models.fast.update_projection import ImageUpdate
from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.transformer import TwoWayTransformer

C, HEADS, L = 128, 4, 256


def _layers() -> TwoWayTransformer:
    torch.manual_seed(0)
    t = TwoWayTransformer(depth=2, embedding_dim=C, num_heads=HEADS, mlp_dim=128).eval()
    for name, p in t.named_parameters():  # LayerNorm gains and biases away from 1 and 0
        if "norm" in name:
            torch.nn.init.normal_(p, mean=1.0 if name.endswith("weight") else 0.0, std=0.3)
    return t


def _update(batch: int, k: int) -> tuple[torch.Tensor, ImageUpdate, torch.Tensor]:
    """Image tokens ``src (1, L, C)``, an update ``p @ n`` of them, and the updated tokens
    ``LN(src + p @ n)`` (the first layer's norm4)."""
    src = torch.randn(1, L, C)
    p = torch.rand(batch, k, L).softmax(1).transpose(1, 2)  # laid out as the attention weights are
    n = torch.randn(batch, k, C)
    return src, p, n


@pytest.mark.parametrize("batch", [1, 3])
def test_scores_and_values_equal_the_materialised_tokens(batch: int) -> None:
    t = _layers()
    norm, attn = t.layers[0].norm4, t.layers[1].cross_attn_token_to_image
    src, p, n = _update(batch, 24)
    pe = torch.randn(1, L, C)
    with torch.inference_mode():
        x, mean, rstd = torch.native_layer_norm(src + p @ n, (C,), norm.weight, norm.bias, norm.eps)
        prep = update_projection.prepare_layer(t.layers[1], norm, src, pe)
        d = attn.internal_dim // HEADS
        left = torch.randn(HEADS, batch * 5, d)
        got = update_projection.scores(left, prep.t2i_k, ImageUpdate(p, n, mean, rstd))
        k = attn.k_proj(x + pe).reshape(batch, L, HEADS, d).permute(2, 0, 3, 1)  # (h, B, d, L)
        ref = (left.reshape(HEADS, batch, 5, d) @ k).reshape(HEADS, batch * 5, L)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        w = torch.rand(HEADS, batch * 5, L).softmax(-1)
        got_v = update_projection.values(w, prep.t2i_v, ImageUpdate(p, n, mean, rstd))
        v = attn.v_proj(x).reshape(batch, L, HEADS, d).transpose(1, 2).transpose(0, 1)  # (h, B, L, d)
        ref_v = (w.reshape(HEADS, batch, 5, L) @ v).reshape(HEADS, batch * 5, d)
        torch.testing.assert_close(got_v, ref_v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_second_layer_through_the_update_equals_the_plain_layer(batch: int) -> None:
    """Both cross-attentions of the second block, given the first block's update, equal the block
    run on the updated tokens; in inference and under autograd."""
    t = _layers()
    src, p, n = _update(batch, 4 * 7)
    pe = torch.randn(1, L, C)
    queries, query_pe = torch.randn(batch, 7, C), torch.randn(batch, 7, C)
    norm = t.layers[0].norm4
    for inference in (False, True):
        with torch.inference_mode(inference):
            x, mean, rstd = torch.native_layer_norm(src + p @ n, (C,), norm.weight, norm.bias, norm.eps)
            prep = update_projection.prepare_layer(t.layers[1], norm, src, pe)
            after = (prep, ImageUpdate(p, n, mean, rstd))
            ref_q, ref_k = t.layers[1](queries, x, query_pe, pe)
            got_q, got_k = block(t.layers[1], queries, x.clone(), query_pe, pe, after=after)
            torch.testing.assert_close(got_q, ref_q, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got_k, ref_k, rtol=1e-4, atol=1e-4)


def test_decoder_takes_the_path_for_few_tokens_only(monkeypatch) -> None:
    """A prepared image's second layer goes through the update for a click, not for many
    points (the update's columns grow with the prompt tokens); both give the plain masks."""
    torch.manual_seed(2)
    dec = MaskDecoder(transformer_dim=C, transformer=_layers()).eval()
    fast = FastMaskDecoder(dec)
    calls = []
    real = update_projection.tokens_to_updated
    monkeypatch.setattr(update_projection, "tokens_to_updated", lambda *a: calls.append(1) or real(*a))
    emb, pe = torch.randn(1, C, 16, 16), torch.randn(1, C, 16, 16)
    dense = torch.randn(1, C, 16, 16)
    for points, through in ((2, True), (40, False)):
        calls.clear()
        sparse = torch.randn(2, points, C)
        with torch.inference_mode():
            plain, iou = dec(emb, pe, sparse, dense.expand(2, -1, -1, -1), True)
            prep = fast.prepare_image(emb, pe, dense)
            got, got_iou = fast(emb, pe, sparse, dense.expand(2, -1, -1, -1), True, prepared=prep)
        assert bool(calls) == through
        torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_iou, iou, rtol=1e-4, atol=1e-5)


def test_prepared_maps_layout() -> None:
    t = _layers()
    src, pe = torch.randn(1, L, C), torch.randn(1, L, C)
    prep = update_projection.prepare_layer(t.layers[1], t.layers[0].norm4, src, pe)
    d = C // 2 // HEADS
    assert prep.t2i_k.a.shape == prep.t2i_k.e.shape == prep.i2t_q.a.shape == (HEADS, d, L)
    assert prep.t2i_v.a.shape == (HEADS, L, d) and prep.t2i_v.e.shape == (HEADS, 1, d)
    norm, lin = t.layers[0].norm4, t.layers[1].cross_attn_token_to_image.k_proj
    ref = F.linear(norm.bias + pe[0], lin.weight, lin.bias).reshape(L, HEADS, d).permute(1, 2, 0)
    torch.testing.assert_close(prep.t2i_k.e, ref)
