"""SamPredictor: parity with the official predictor, batching, embeddings as values, bad inputs.

The default parity model is a 2-block ViT (1024 input, 64x64 grid, the full SAM decoder), built
with the official package and with ours from the same random weights, so the encoder runs in
seconds. Set ``NAPARI_SAM_SLOW=1`` to run the same parity checks on vit_b (~1-2 min on 2 cores).
"""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch

from napari_sam.engine.predictor import ImageEmbedding, SamPredictor

H, W = 600, 800
# vit_b parity (both encoders, ~1-2 min on 2 cores) only when asked for
ARCHS = ["tiny", "vit_b"] if os.environ.get("NAPARI_SAM_SLOW") else ["tiny"]


def _models(reference, arch: str):
    """(official model, our model) with identical random weights."""
    from napari_sam.models.image_encoder import ImageEncoderViT
    from napari_sam.models.sam import build_model, build_sam

    torch.manual_seed(0)
    if arch == "vit_b":
        ref = reference.sam_model_registry["vit_b"]()
        ours = build_model("vit_b")
    else:
        import importlib

        ref = importlib.import_module("segment_anything.build_sam")._build_sam(64, 2, 2, [1])
        enc = ImageEncoderViT(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=14)
        ours = build_sam(enc, img_size=1024, embedding_size=(64, 64))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(0)
    img = np.stack([(xx * 0.3) % 255, (yy * 0.4) % 255, ((xx + yy) * 0.2) % 255], -1)
    img[150:400, 200:500] = (230, 40, 40)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, reference):
    ref_model, our_model = _models(reference, request.param)
    ref = reference.SamPredictor(ref_model)
    ours = SamPredictor(our_model, device="cpu")
    img = _image()
    ref.set_image(img)
    ours.set_image(img)
    return ref, ours, img


PROMPTS = {
    "point": dict(point_coords=np.array([[350, 270]]), point_labels=np.array([1])),
    "point_single": dict(
        point_coords=np.array([[350, 270]]), point_labels=np.array([1]), multimask_output=False
    ),
    "points_pos_neg": dict(
        point_coords=np.array([[350.5, 270.25], [250, 200], [700, 550]]),
        point_labels=np.array([1, 1, 0]),
        multimask_output=False,
    ),
    "box": dict(box=np.array([200, 150, 500, 400]), multimask_output=False),
    "box_multi": dict(box=np.array([200, 150, 500, 400])),
    "box_points": dict(
        box=np.array([200, 150, 500, 400]),
        point_coords=np.array([[300, 300], [480, 160]]),
        point_labels=np.array([1, 0]),
        multimask_output=False,
    ),
}


def _check_same(a, b):
    (ma, sa, la), (mb, sb, lb) = a, b
    assert mb.shape == ma.shape and mb.dtype == np.bool_
    assert sb.shape == sa.shape and sb.dtype == np.float32 and lb.dtype == np.float32
    assert lb.shape == la.shape
    assert (ma == mb).mean() >= 0.999
    np.testing.assert_allclose(sb, sa, atol=1e-4)
    np.testing.assert_allclose(lb, la, atol=1e-3, rtol=1e-3)


def test_embedding_matches_official(pair):
    ref, ours, _ = pair
    emb = ours.embedding
    assert emb.original_size == (H, W) and emb.input_size == (768, 1024)
    assert emb.features.shape == (1, 256, 64, 64) and emb.features.dtype == torch.float32
    torch.testing.assert_close(emb.features, ref.features, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches_official(pair, name):
    ref, ours, _ = pair
    a, b = ref.predict(**PROMPTS[name]), ours.predict(**PROMPTS[name])
    _check_same(a, b)
    assert b[0].shape[1:] == (H, W) and b[2].shape[1:] == (256, 256)
    assert 0 < b[0].mean() < 1 or name.startswith("point")  # not a trivial mask for boxes


def test_mask_input_matches_official(pair):
    ref, ours, _ = pair
    _, scores, low = ours.predict(**PROMPTS["point"])
    prev = low[np.argmax(scores)][None]
    kw = dict(point_coords=np.array([[350, 270], [300, 200]]), point_labels=np.array([1, 1]))
    _check_same(
        ref.predict(**kw, mask_input=prev, multimask_output=False),
        ours.predict(**kw, mask_input=prev, multimask_output=False),
    )


def test_return_logits_matches_official(pair):
    ref, ours, _ = pair
    a = ref.predict(**PROMPTS["box"], return_logits=True)[0]
    b = ours.predict(**PROMPTS["box"], return_logits=True)[0]
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("size", [(600, 800), (1024, 1024), (2048, 1536), (37, 1000), (1, 1), (513, 7)])
def test_postprocess_is_exact(pair, size):
    ref, ours, _ = pair
    low = torch.randn(2, 3, 256, 256)
    input_size = ours.transform.get_preprocess_shape(*size, 1024)
    expected = ref.model.postprocess_masks(low, input_size, size)
    got = ours.postprocess_masks(low, input_size, size, return_logits=True)
    assert torch.equal(got, expected)
    assert torch.equal(ours.postprocess_masks(low, input_size, size), expected > 0)


def test_predict_batch_equals_predict(pair):
    _, ours, _ = pair
    boxes = np.array([[200, 150, 500, 400], [50, 50, 300, 250], [400, 300, 780, 590]])
    coords = np.array([[[350, 270], [0, 0]], [[100, 100], [200, 200]], [[600, 400], [0, 0]]])
    labels = np.array([[1, -1], [1, 0], [1, -1]])
    masks, scores, low = ours.predict_batch(coords, labels, boxes)
    assert masks.shape == (3, 1, H, W) and scores.shape == (3, 1) and low.shape == (3, 1, 256, 256)
    for i in range(3):
        m, s, lo = ours.predict(coords[i], labels[i], boxes[i], multimask_output=False)
        assert (m == masks[i]).mean() >= 0.999
        np.testing.assert_allclose(s, scores[i], atol=1e-4)
        np.testing.assert_allclose(lo, low[i], atol=1e-3, rtol=1e-3)
    # boxes only, multimask, with mask inputs
    m3, s3, _ = ours.predict_batch(boxes=boxes[:2], mask_input=low[:2], multimask_output=True)
    assert m3.shape == (2, 3, H, W) and s3.shape == (2, 3)
    m1, s1, _ = ours.predict(box=boxes[1], mask_input=low[1], multimask_output=True)
    assert (m1 == m3[1]).mean() >= 0.999
    np.testing.assert_allclose(s1, s3[1], atol=1e-4)


def test_predict_batch_empty(pair):
    masks, scores, low = pair[1].predict_batch(boxes=np.zeros((0, 4)))
    assert masks.shape == (0, 1, H, W) and masks.dtype == np.bool_
    assert scores.shape == (0, 1) and low.shape == (0, 1, 256, 256)


def test_predict_torch_like_official(pair):
    ref, ours, _ = pair
    box = torch.tensor([[200.0, 150.0, 500.0, 400.0]]) * (1024 / 800)
    a = ref.predict_torch(None, None, box, multimask_output=False)
    b = ours.predict_torch(None, None, box, multimask_output=False)
    assert b[0].shape == (1, 1, H, W) and b[0].dtype == torch.bool
    assert (a[0] == b[0]).float().mean() >= 0.999
    torch.testing.assert_close(b[1], a[1], atol=1e-4, rtol=0)


def test_embedding_as_value(pair):
    _, ours, img = pair
    before = ours.embedding
    emb = ours.compute_embedding(img[:300, :400])  # does not change the state
    assert ours.embedding is before and emb.original_size == (300, 400) and emb.input_size == (768, 1024)
    assert emb.nbytes == 256 * 64 * 64 * 4 and emb.to("cpu") is emb
    other = SamPredictor(ours.model, device="cpu")
    assert not other.is_image_set
    other.set_image_embedding(before)
    a, b = ours.predict(**PROMPTS["box"]), other.predict(**PROMPTS["box"])
    # other's first call decodes without the prepared image (ours has been prepared): float rounding apart
    assert (a[0] == b[0]).mean() > 0.9999
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(other.get_image_embedding(), before.features)
    other.reset_image()
    assert not other.is_image_set and other.embedding is None


def test_encode_batch_equals_one_at_a_time(pair):
    """``encode_batch``: images of different sizes in batches (of 2 here) give the embeddings that
    ``compute_embedding`` gives one by one; each owns its features; bad batch sizes are refused."""
    _, ours, img = pair
    images = [img[:300, :400], img, img[:200, :120], img[::2, ::2]]
    batch = ours.encode_batch(images, batch_size=2)
    assert len(batch) == 4
    for im, emb in zip(images, batch, strict=True):
        one = ours.compute_embedding(im)
        assert (emb.original_size, emb.input_size) == (one.original_size, one.input_size)
        assert emb.features.shape == (1, 256, 64, 64) and emb.features.untyped_storage().nbytes() == emb.nbytes
        torch.testing.assert_close(emb.features, one.features, rtol=1e-4, atol=1e-4)
    assert ours.encode_batch([]) == []
    with pytest.raises(ValueError, match="batch_size"):
        ours.encode_batch(images, batch_size=0)


def test_image_prepared_from_its_second_prompt_call_or_a_large_batch(pair):
    """The decoder's per-image work is done when it pays: not for a single small call on an image
    (a propagation step), but from the image's second call on, or for a first call of
    ``PREPARE_FOR_PROMPTS`` prompts; the masks are the plain path's either way."""
    from napari_sam.engine.predictor import PREPARE_FOR_PROMPTS

    _, ours, img = pair
    p = SamPredictor(ours.model, device="cpu")
    p.set_image(img[:200, :300])  # encoding: prepared at once
    assert p._prepared is not None
    p.set_image_embedding(ours.embedding)
    first = p.predict(**PROMPTS["point"])
    assert p._prepared is None
    again = p.predict(**PROMPTS["point"])
    assert p._prepared is not None
    assert (first[0] == again[0]).mean() > 0.9999
    np.testing.assert_allclose(first[1], again[1], rtol=1e-5, atol=1e-6)
    refine = dict(point_coords=np.array([[350, 270]]), point_labels=np.array([1]), multimask_output=False)
    p.set_image_embedding(ours.embedding)  # a new image: plain again, also with a mask prompt
    assert p._prepared is None
    plain = p.predict(**refine, mask_input=first[2][:1])
    assert p._prepared is None
    prepared = p.predict(**refine, mask_input=first[2][:1])
    assert p._prepared is not None
    assert (plain[0] == prepared[0]).mean() > 0.9999
    np.testing.assert_allclose(plain[1], prepared[1], rtol=1e-5, atol=1e-6)
    p.reset_image()
    p.set_image_embedding(ours.embedding)
    boxes = np.array([[40, 30, 200, 160]] * PREPARE_FOR_PROMPTS)
    p.predict_batch(boxes=boxes)
    assert p._prepared is not None
    p.set_image_embedding(ours.embedding)
    p.prepare()  # what set_image does after encoding: the first click is then on the prepared image
    prep = p._prepared
    assert prep is not None
    first_prepared = p.predict(**PROMPTS["point"])
    assert p._prepared is prep
    np.testing.assert_allclose(first_prepared[1], again[1], rtol=1e-5, atol=1e-6)


def test_embedding_carries_its_decoder_preparation(pair):
    """``prepare_embedding`` does the decoder's per-image work without changing the predictor;
    ``set_image_embedding`` then decodes the first prompt on it (the same results as a predictor
    that prepared itself), unless the decoder or its weights differ; ``to``/``without_preparation``
    drop it."""
    _, ours, _ = pair
    p = SamPredictor(ours.model, device="cpu")
    emb = ours.embedding
    assert emb.prepared is None
    ready = p.prepare_embedding(emb)
    assert not p.is_image_set and ready.prepared is not None and emb.prepared is None
    assert ready.prepared.nbytes > 4 * emb.nbytes
    assert torch.equal(ready.features, emb.features) and ready == emb  # the preparation is not compared
    assert p.prepare_embedding(ready) is ready  # already prepared for this decoder
    p.set_image_embedding(ready)
    assert p._prepared is ready.prepared.value  # before any prompt
    first = p.predict(**PROMPTS["point"])
    assert p._prepared is ready.prepared.value
    q = SamPredictor(ours.model, device="cpu")
    q.set_image_embedding(emb)
    q.prepare()
    want = q.predict(**PROMPTS["point"])
    for a, b in zip(first, want, strict=True):
        np.testing.assert_array_equal(a, b)
    other = SamPredictor(copy.deepcopy(ours.model), device="cpu")  # another decoder (equal weights)
    other.set_image_embedding(ready)
    assert other._prepared is None
    assert ready.without_preparation().prepared is None and ready.without_preparation() == ready
    saved = pickle.loads(pickle.dumps(ready))  # saved without it (it holds a weak reference)
    assert saved.prepared is None and torch.equal(saved.features, ready.features) and ready.prepared is not None
    assert emb.without_preparation() is emb
    with torch.no_grad():  # an in-place weight change (an optimiser step, a loaded state dict)
        w = ours.model.mask_decoder.iou_token.weight
        w.add_(0.0)
    p.set_image_embedding(ready)
    assert p._prepared is None  # made with weights of another version: prepared again when it pays
    with pytest.raises(TypeError, match="ImageEmbedding"):
        p.prepare_embedding(emb.features)
    with pytest.raises(ValueError, match="must have shape"):
        p.prepare_embedding(ImageEmbedding(torch.zeros(1, 256, 32, 32), (10, 10), (10, 10)))


def test_bgr_input(pair):
    _, ours, img = pair
    bgr = ours.compute_embedding(img[..., ::-1], image_format="BGR")
    assert torch.equal(bgr.features, ours.embedding.features)


class _RecordingEncoder(torch.nn.Module):
    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        self.input = x
        return torch.ones(1, 256, 64, 64, dtype=torch.bfloat16)


def test_precision_and_preprocessing():
    from napari_sam.models.sam import build_sam

    enc = _RecordingEncoder()
    p = SamPredictor(build_sam(enc, img_size=1024, embedding_size=(64, 64)), device="cpu", precision="bf16")
    gray = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50
    emb = p.compute_embedding(gray, contrast_limits=(0, 30 * 40 * 50))
    assert enc.autocast == (True, torch.bfloat16)
    assert (
        emb.features.dtype == torch.float32
        and emb.original_size == (30, 40)
        and emb.input_size == (768, 1024)
    )
    x = enc.input  # normalised, zero-padded below the 768 resized rows
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert torch.all(x[..., 768:, :] == 0) and not torch.all(x[..., :768, :] == 0)
    assert SamPredictor(p.model, device="cpu").autocast_dtype is None  # fp32 on CPU by default


# ---------------------------------------------------------------------------------- errors
def test_predict_before_set_image(pair):
    p = SamPredictor(pair[1].model, device="cpu")
    for call in (
        lambda: p.predict(box=np.array([0, 0, 5, 5])),
        p.get_image_embedding,
        lambda: p.predict_torch(None, None, torch.zeros(1, 4)),
    ):
        with pytest.raises(RuntimeError, match="no image is set"):
            call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[1, 2]])), "point_labels must be given"),
        (dict(point_labels=np.array([1])), "point_coords must be given"),
        (dict(point_coords=np.array([1, 2]), point_labels=np.array([1])), r"shape \(N, 2\)"),
        (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), r"shape \(N, 2\)"),
        (
            dict(point_coords=np.array([[1, 2]]), point_labels=np.array([1, 1])),
            r"point_labels must have shape \(1,\)",
        ),
        (dict(box=np.array([1, 2, 3])), r"box must have shape \(4\)"),
        (
            dict(box=np.array([1, 2, 3, 4]), mask_input=np.zeros((1, 128, 128))),
            r"mask_input must have shape \(1, 256, 256\)",
        ),
        (dict(box=np.array([1, 2, 3, 4]), mask_input=np.zeros((256, 256))), r"got \(256, 256\)"),
    ],
)
def test_predict_bad_inputs(pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair[1].predict(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.zeros((2, 2)), point_labels=np.ones(2)), r"shape \(B, N, 2\)"),
        (dict(boxes=np.zeros(4)), r"boxes must have shape \(B, 4\)"),
        (
            dict(boxes=np.zeros((2, 4)), point_coords=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))),
            "batch 3",
        ),
        (dict(boxes=np.zeros((2, 4)), mask_input=np.zeros((3, 1, 256, 256))), "one per object"),
    ],
)
def test_predict_batch_bad_inputs(pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair[1].predict_batch(**kwargs)


def test_bad_embedding_image_and_format(pair):
    _, ours, img = pair
    with pytest.raises(ValueError, match=r"\(1, C, 64, 64\).*\(1, 256, 32, 32\)"):
        ours.set_image_embedding(ImageEmbedding(torch.zeros(1, 256, 32, 32), (10, 10), (10, 10)))
    with pytest.raises(TypeError, match="ImageEmbedding"):
        ours.set_image_embedding(torch.zeros(1, 256, 64, 64))
    before = ours.embedding
    with pytest.raises(ValueError, match=r"input_size \(2048, 1024\) must be within the model's 1024x1024"):
        ours.set_image_embedding(ImageEmbedding(torch.zeros(1, 256, 64, 64), (2048, 1024), (2048, 1024)))
    with pytest.raises(ValueError, match="original_size"):
        ours.set_image_embedding(ImageEmbedding(torch.zeros(1, 256, 64, 64), (0, 10), (10, 10)))
    assert ours.embedding is before  # the image in use stays
    with pytest.raises(ValueError, match="image_format"):
        ours.compute_embedding(img, image_format="HSV")
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 5\)"):
        ours.compute_embedding(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="precision"):
        SamPredictor(ours.model, device="cpu", precision="fp8")


def test_predictor_takes_the_models_resize():
    """LiteMedSAM's area resize and min-max normalisation; SAM's PIL bilinear stays the default."""
    from napari_sam.models.lite_medsam import build_lite_medsam
    from napari_sam.models.sam import build_model

    lite = SamPredictor(build_lite_medsam(), device="cpu")
    assert lite.transform.interpolation == "area" and lite.transform.target_length == 256
    emb = lite.compute_embedding(np.random.default_rng(0).integers(0, 256, (300, 200), dtype=np.uint8))
    assert emb.features.shape == (1, 256, 64, 64) and emb.input_size == (256, 171)
    assert SamPredictor(build_model("vit_t"), device="cpu").transform.interpolation == "bilinear"


# ---------------------------------------------------------------------- zoom: small images not enlarged


def test_zoom_masks_come_back_in_image_coordinates_and_padding_does_not_leak():
    """At zoom 2 a 40 x 30 image fills 80 x 60 of the 128 px input: logits set in that region map
    back to the image's pixels; logits in the zero padding beyond it never reach the mask."""
    from _synthetic import tiny_sam

    p = SamPredictor(tiny_sam(img_size=128), zoom=2.0)
    img = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    p.set_image(img)
    assert p.zoom == 2.0 and p.original_size == (40, 30) and p.input_size == (80, 60)
    low = torch.full((1, 1, 32, 32), -10.0)  # low-res logits: 4 input pixels per cell
    low[..., 5:10, 3:8] = 10.0  # input rows 20-39, cols 12-31 -> image rows 10-19, cols 6-15
    low[..., 20:, :] = 10.0  # below the image (input rows >= 80): padding
    low[..., :, 15:] = 10.0  # right of the image (input cols >= 60): padding
    masks = p.postprocess_masks(low, p.input_size, p.original_size)[0, 0].numpy()
    assert masks.shape == (40, 30)
    ys, xs = np.nonzero(masks)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 6, 15)
    # prompts go the other way: image (x, y) -> input pixels, scaled by the zoom
    from napari_sam.engine.prompts import to_input

    np.testing.assert_allclose(to_input(np.array([[7.0, 12.0]]), p.embedding, p.transform), [[14.0, 24.0]])
    # and a click is decoded on the same geometry: one mask the size of the image
    m, s, lo = p.predict(np.array([[15, 20]]), np.array([1]), multimask_output=False)
    assert m.shape == (1, 40, 30) and lo.shape == (1, 32, 32)


def test_zoom_default_is_the_models_and_fit_is_sams_resize():
    from _synthetic import tiny_sam

    from napari_sam.models.sam import Preprocessing

    model = tiny_sam(img_size=128)
    img = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    assert SamPredictor(model).zoom is None  # SAM's preprocessing: enlarged to fill the input
    assert SamPredictor(model).compute_embedding(img).input_size == (128, 96)
    model.preprocessing = Preprocessing(zoom=1.0)
    p = SamPredictor(model)
    assert p.zoom == 1.0 and p.compute_embedding(img).input_size == (40, 30)
    assert p.compute_embedding(img, zoom=None).input_size == (128, 96)  # asked for: filled
    assert SamPredictor(model, zoom=3.0).compute_embedding(img).input_size == (120, 90)
    with pytest.raises(ValueError, match="zoom"):
        Preprocessing(zoom=0)
