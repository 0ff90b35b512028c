"""``SamPredictor`` with a SAM 2.1 model against Meta's ``SAM2ImagePredictor`` (``../shared/reference/sam2``):
the same image (uint8, any size: SAM 2 stretches it to 1024 x 1024) and prompts in the image's pixels
give the same masks, scores and low-res logits, for every prompt kind; and the rest of the engine
(stores, automatic masks) takes SAM 2 embeddings, with their high-resolution maps."""

from __future__ import annotations

import copy

import _sam2_reference as ref
import numpy as np
import pytest
import torch

from napari_sam.engine.embedding import ImageEmbedding
from napari_sam.engine.predictor import SamPredictor
from napari_sam.models.sam2.sam2 import SAM21_CONFIGS, Sam2

ARCH = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def meta():
    return ref.build_reference(ARCH, seed=1)


@pytest.fixture(scope="module")
def ours(meta):
    parts = [copy.deepcopy(m) for m in (meta.image_encoder, meta.memory_attention, meta.memory_encoder)]
    model = Sam2(*parts, **SAM21_CONFIGS[ARCH].model_kwargs(), arch=ARCH)
    model.load_state_dict(meta.state_dict(), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    low = rng.integers(0, 255, (12, 16, 3)).astype(np.float32)
    img = np.kron(low, np.ones((15, 15, 1)))  # 180 x 240 blocks: edges for the encoder to see
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def pair(meta, ours, image):
    ref.sam2_package()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    theirs = SAM2ImagePredictor(meta)
    with torch.inference_mode():
        theirs.set_image(image)
    mine = SamPredictor(ours, device="cpu")
    mine.set_image(image)
    return mine, theirs


PROMPTS = {
    "point": dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1])),
    "points": dict(point_coords=np.array([[60.0, 40.0], [150.0, 120.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([30.0, 20.0, 140.0, 110.0])),
    "box+points": dict(box=np.array([30.0, 20.0, 140.0, 110.0]), point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([0])),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_predict_matches_meta(pair, kind, multimask):
    mine, theirs = pair
    kw = PROMPTS[kind]
    m1, s1, l1 = mine.predict(**kw, multimask_output=multimask)
    with torch.inference_mode():
        m2, s2, l2 = theirs.predict(**kw, multimask_output=multimask)
    assert m1.shape == m2.shape and m1.shape[-2:] == (180, 240)
    assert (m1 == m2).mean() >= 0.999
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    np.testing.assert_allclose(l1, l2, atol=1e-3)
    assert np.abs(l1).max() <= 32.0


def test_mask_prompt_and_logits_match_meta(pair):
    mine, theirs = pair
    _, _, low = mine.predict(**PROMPTS["point"], multimask_output=False)
    kw = dict(PROMPTS["points"], mask_input=low)
    m1, s1, l1 = mine.predict(**kw, multimask_output=False, return_logits=True)
    with torch.inference_mode():
        m2, s2, l2 = theirs.predict(**kw, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(m1, m2, atol=1e-3)
    np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_predict_batch_of_boxes_matches_meta(pair):
    mine, theirs = pair
    boxes = np.array([[30.0, 20.0, 140.0, 110.0], [100.0, 60.0, 230.0, 170.0], [0.0, 0.0, 60.0, 60.0]])
    m1, s1, _ = mine.predict_batch(boxes=boxes, multimask_output=False)
    with torch.inference_mode():
        m2, s2, _ = theirs.predict(box=boxes, multimask_output=False)
    assert (m1 == m2).mean() >= 0.999
    np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_embedding_carries_high_res_maps_through_packing(pair):
    mine, _ = pair
    emb = mine.embedding
    assert emb.high_res is not None and [t.shape[1] for t in emb.high_res] == [32, 64]
    assert emb.input_size == (1024, 1024) and emb.original_size == (180, 240)
    back = emb.unpacked(emb.packed())
    for a, b in zip((emb.features, *emb.high_res), (back.features, *back.high_res), strict=True):
        assert torch.equal(a, b)
    assert isinstance(back, ImageEmbedding) and mine.decoder_path == "plain"


def test_fast_decoder_is_refused_for_sam2(ours):
    with pytest.raises(ValueError, match="plain"):
        SamPredictor(ours, device="cpu", decoder="fast")
