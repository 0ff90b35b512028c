"""The CPU fast path of the mask decoder (``napari_sam.models.fast``) against the plain,
reference-shaped modules: every prompt kind, batches, the prepared image, mask prompts as low-rank
updates, the IoU filter, its cache, and the predictor's policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.predictor import SamPredictor
from napari_sam.models.fast import (
    FastMaskDecoder,
    fast_decoder,
    mask_update,
    resolve_decoder_path,
)
from napari_sam.models.fast.transformer import FastTransformer
from napari_sam.models.sam import build_model


def _predictors(model):
    return SamPredictor(model, device="cpu", decoder="fast"), SamPredictor(model, device="cpu", decoder="plain")


def _prompt_kinds(rng: np.random.Generator, size: int):
    """(name, predict or predict_batch kwargs, batch?) for every prompt kind."""
    pts = rng.uniform(0, size, (3, 2))
    box = np.array([40.0, 60.0, 300.0, 280.0])
    mask = rng.normal(0, 3, (1, 256, 256)).astype(np.float32)
    return [
        ("one point", dict(point_coords=pts[:1], point_labels=np.array([1])), False),
        ("points", dict(point_coords=pts, point_labels=np.array([1, 0, 1])), False),
        ("box", dict(box=box), False),
        ("box and points", dict(box=box, point_coords=pts[:2], point_labels=np.array([1, 0])), False),
        ("points and mask", dict(point_coords=pts[:2], point_labels=np.array([1, 1]), mask_input=mask), False),
        ("mask alone", dict(mask_input=mask), False),
        ("batch of points", dict(point_coords=pts[:, None], point_labels=np.ones((3, 1))), True),
        ("batch of boxes", dict(boxes=np.stack([box, box / 2, box + 20])), True),
        ("batch of boxes and masks", dict(boxes=np.stack([box, box / 2]), mask_input=np.stack([mask, -mask])), True),
    ]


@pytest.mark.parametrize("multimask", [True, False])
def test_fast_and_plain_predictors_agree_on_every_prompt_kind(multimask):
    """``SamPredictor(decoder="fast")`` and ``decoder="plain"`` give the same logits, scores and
    masks for points, boxes, masks, batches, multimask on and off, on the first call of an image
    (unprepared) and on later ones (prepared, mask prompts as low-rank updates)."""
    torch.manual_seed(0)
    model = build_model("nano").eval()
    fast, plain = _predictors(model)
    assert (fast.decoder_path, plain.decoder_path) == ("fast", "plain")
    assert fast.fast_decoder is not None and plain.fast_decoder is None
    image = np.random.default_rng(0).integers(0, 255, (400, 500), dtype=np.uint8)
    emb = fast.compute_embedding(image)
    for p in (fast, plain):
        p.set_image_embedding(emb)
    rng = np.random.default_rng(1)
    for round_ in range(2):  # first calls (unprepared), then on the prepared image
        for name, kwargs, batch in _prompt_kinds(rng, 400):
            if batch:
                got = fast.predict_batch(**kwargs, multimask_output=multimask, return_logits=True)
                ref = plain.predict_batch(**kwargs, multimask_output=multimask, return_logits=True)
            else:
                got = fast.predict(**kwargs, multimask_output=multimask, return_logits=True)
                ref = plain.predict(**kwargs, multimask_output=multimask, return_logits=True)
            for a, b in zip(got, ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4, err_msg=f"{name}, round {round_}")
            agree = ((got[0] > 0) == (ref[0] > 0)).mean()
            assert agree > 0.9999, (name, agree)
    assert fast._prepared is not None and plain._prepared is None


def test_decoder_policy():
    """auto = fast on a CPU, plain elsewhere; an unknown value is refused with the choices."""
    assert resolve_decoder_path("auto", torch.device("cpu")) == "fast"
    assert resolve_decoder_path("auto", torch.device("cuda")) == "plain"
    assert resolve_decoder_path("plain", torch.device("cpu")) == "plain"
    assert resolve_decoder_path("fast", torch.device("cuda")) == "fast"
    with pytest.raises(ValueError, match="'auto', 'plain', 'fast'"):
        resolve_decoder_path("quick", torch.device("cpu"))
    model = build_model("nano").eval()
    assert SamPredictor(model, device="cpu").decoder_path == "fast"


@pytest.mark.parametrize("points", [1, 15])
def test_fast_decoder_equals_the_plain_modules(points):
    """The fast path (with and without a prepared image, with a mask prompt) gives the plain modules' numbers (autograd on: fresh tensors); 15 points take the plain
    attention inside the fast path."""
    torch.manual_seed(1)
    model = build_model("nano")
    plain, pe_mod = model.mask_decoder, model.prompt_encoder
    dec = FastMaskDecoder(plain)
    emb, pe = torch.randn(2, 128, 64, 64), pe_mod.get_dense_pe()
    pts, lab = torch.rand(2, points, 2) * 512, torch.ones(2, points, dtype=torch.int)
    mask = torch.randn(2, 1, 256, 256)
    with torch.no_grad():
        sparse, dense = pe_mod((pts, lab), None, None)
        sparse_m, dense_m = pe_mod((pts, lab), None, mask)
    ref = plain(emb, pe, sparse, dense, True)  # autograd on
    ref_m = plain(emb[:1], pe, sparse_m, dense_m, False)
    with torch.inference_mode():
        got = dec(emb, pe, sparse, dense, True)
        got_m = dec(emb[:1], pe, sparse_m, dense_m, False)  # shared image, per-prompt mask prompts
        prep = dec.prepare_image(emb[:1], pe, dense[:1])
        got_p = dec(emb[:1], pe, sparse, dense, True, prepared=prep)
        ref_p = plain(emb[:1], pe, sparse, dense, True)
    for a, b in ((got, ref), (got_m, ref_m), (got_p, ref_p)):
        torch.testing.assert_close(a[0], b[0].detach(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a[1], b[1].detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared_image", [True, False])
def test_decoder_chunks_and_iou_filter(shared_image):
    """A batch larger than one cache-sized chunk gives the per-prompt results; ``predict_filtered``
    returns exactly the masks of ``forward`` whose IoU passes, and only those."""
    torch.manual_seed(0)
    model = build_model("nano").eval()
    dec = FastMaskDecoder(model.mask_decoder)
    n = 19  # nano: 8 prompts per chunk -> chunks of 8, 8, 3
    emb = torch.randn(1 if shared_image else n, 128, 64, 64)
    pts = torch.rand(n, 2, 2) * 512
    lab = torch.tensor([[1, 0]] * n, dtype=torch.int)
    pe = model.prompt_encoder.get_dense_pe()
    if not shared_image:  # per-prompt embeddings and positional encodings (as in training)
        pe = pe.expand(n, -1, -1, -1) + 0.01 * torch.randn(n, 1, 1, 1)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder((pts, lab), None, None)
        masks, iou = dec(emb, pe, sparse, dense, True)
        assert masks.shape == (n, 3, 256, 256) and iou.shape == (n, 3)
        ref, ref_iou = model.mask_decoder(emb, pe, sparse, dense, True)
        torch.testing.assert_close(masks, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
        for i in (0, 9, 18):  # one prompt alone, in each chunk
            one = slice(0, 1) if shared_image else slice(i, i + 1)
            m1, i1 = dec(emb[one], pe[one], sparse[i : i + 1], dense[i : i + 1], True)
            torch.testing.assert_close(m1[0], masks[i], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(i1[0], iou[i], atol=1e-5, rtol=1e-5)
        # a threshold in the widest gap near the median: paths that differ by float rounding
        # (prepared or not) must not flip a mask that sits on the threshold
        vals = iou.flatten().sort().values
        lo, hi = len(vals) // 3, 2 * len(vals) // 3
        i = lo + int((vals[lo + 1 : hi + 1] - vals[lo:hi]).argmax())
        thr = float((vals[i] + vals[i + 1]) / 2)
        iou_f, keep, kept = dec.predict_filtered(emb, pe, sparse, dense, True, thr)
        torch.testing.assert_close(iou_f, iou)
        assert torch.equal(keep, iou > thr) and 0 < int(keep.sum()) < 3 * n
        torch.testing.assert_close(kept, masks[keep], atol=1e-4, rtol=1e-4)
        _, keep0, none = dec.predict_filtered(emb, pe, sparse, dense, False, float("inf"))
        assert keep0.shape == (n, 1) and not keep0.any() and none.shape == (0, 256, 256)
        if shared_image:  # the image's prepared first-layer work gives the same numbers
            prep = dec.prepare_image(emb, pe, dense)
            m2, i2 = dec(emb, pe, sparse, dense, True, prepared=prep)
            torch.testing.assert_close(m2, masks, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(i2, iou, atol=1e-5, rtol=1e-5)
            _, keep2, kept2 = dec.predict_filtered(emb, pe, sparse, dense, True, thr, prep)
            assert torch.equal(keep2, keep)
            torch.testing.assert_close(kept2, kept, atol=1e-4, rtol=1e-4)


def test_positional_parts_are_kept_until_the_encoding_or_a_weight_changes():
    """``FastTransformer.positional_parts`` (a third of ``prepare``'s products) is computed once
    for an equal positional encoding and unchanged weights, again after an in-place weight update
    or for another encoding, and never kept under autograd; prepared images agree either way."""
    torch.manual_seed(2)
    model = build_model("nano").eval()
    tr, pe = FastTransformer(model.mask_decoder.transformer), model.prompt_encoder.get_dense_pe()
    emb = torch.randn(1, 128, 64, 64)
    with torch.inference_mode():
        parts = tr.positional_parts(pe)
        assert tr.positional_parts(pe.clone()) is parts  # equal values, another tensor
        cached = tr.prepare(emb, pe)
        tr._positional_cache = None
        fresh = tr.prepare(emb, pe)
    for name in ("t2i_k", "t2i_v", "i2t_q"):
        torch.testing.assert_close(getattr(cached, name), getattr(fresh, name), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.second.t2i_k.e, fresh.second.t2i_k.e, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        parts = tr.positional_parts(pe)
        assert tr.positional_parts(pe + 1e-3) is not parts  # another encoding
        assert tr.positional_parts(pe[..., :32]) is not parts  # another grid
        parts = tr.positional_parts(pe)
    with torch.no_grad():
        tr.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.01)  # an optimiser step, a loaded state dict
    with torch.inference_mode():
        again = tr.positional_parts(pe)
    assert again is not parts and not torch.equal(again.t2i_k, parts.t2i_k)
    tr._positional_cache = None
    with torch.enable_grad():
        tr.positional_parts(pe)
    assert tr._positional_cache is None


def test_mask_prompt_as_a_low_rank_update_of_the_prepared_image():
    """A mask prompt is the no-mask dense prompt plus a rank-17 product (``mask_update``); decoding
    the prepared (no-mask) image with it gives the plain decoder's masks with the mask's dense prompt."""
    torch.manual_seed(1)
    model = build_model("nano").eval()
    enc, plain = model.prompt_encoder, model.mask_decoder
    dec = FastMaskDecoder(plain)
    for p in enc.mask_downscaling.parameters():  # away from the initial values
        torch.nn.init.normal_(p, std=0.2)
    emb, pe = torch.randn(1, 128, 64, 64), enc.get_dense_pe()
    for b in (1, 3):
        mask = torch.randn(b, 1, 256, 256) * 3
        pts = (torch.rand(b, 2, 2) * 512, torch.tensor([[1.0, 0.0]] * b))
        with torch.inference_mode():
            sparse, dense = enc(pts, None, mask)
            _, no_mask = enc(pts, None, None)
            z, m = mask_update(enc, mask)
            assert z.shape == (b, 64 * 64, 17) and m.shape == (17, 128)
            low_rank = (z @ m).transpose(1, 2).reshape(b, 128, 64, 64) + no_mask
            torch.testing.assert_close(low_rank, dense, rtol=1e-5, atol=1e-5)
            prep = dec.prepare_image(emb, pe, no_mask)
            for multimask in (True, False):
                ref, ref_iou = plain(emb, pe, sparse, dense, multimask)
                got, iou = dec(emb, pe, sparse, None, multimask, prepared=prep, dense_update=(z, m))
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-5)
            with pytest.raises(ValueError, match="one low-rank update per prompt"):
                dec(emb, pe, sparse[:1].expand(2, -1, -1), None, True, prepared=prep, dense_update=(z[:1], m))


def test_a_model_the_fast_path_used_pickles_and_gets_its_own_fast_decoder(tmp_path):
    """The fast path's caches live beside the model (``fast_decoder``), not in it: a model whose
    fast decoder has prepared an image saves whole with ``torch.save`` and deep-copies, and a
    copy gets a fast decoder of its own."""
    import copy

    model = build_model("nano").eval()
    fast = fast_decoder(model.mask_decoder)
    assert fast_decoder(model.mask_decoder) is fast
    with torch.no_grad():
        pe = model.prompt_encoder.get_dense_pe()
        fast.transformer.prepare(torch.randn(1, 128, 64, 64), pe)
    assert fast.transformer._positional_cache is not None
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (loaded, copy.deepcopy(model)):
        other_fast = fast_decoder(other.mask_decoder)
        assert other_fast is not fast and other_fast.transformer._positional_cache is None
        assert torch.equal(other.mask_decoder.transformer.layers[0].mlp.lin1.weight, model.mask_decoder.transformer.layers[0].mlp.lin1.weight)
