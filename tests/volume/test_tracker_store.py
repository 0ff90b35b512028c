"""SAM 2 tracking with image features from the embedding store (``volume.frames.store_features``):
slices the store already holds are not encoded again, those encoded for tracking stay in the store,
and the masks are those of the tracker's own encoder up to the store's float16 (our SAM 2.1 tiny
networks at 256 px, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tracker import structured_stack

from napari_sam.engine.predictor import SamPredictor
from napari_sam.volume.frames import SliceFeatures, store_features
from napari_sam.volume.keyframes import track_keyframes
from napari_sam.volume.propagate import Prompt, segment_volume
from napari_sam.volume.store import EmbeddingStore
from napari_sam.volume.tracker import VolumeTracker


@pytest.fixture(scope="module")
def model():
    from napari_sam.models.sam import build_model

    torch.manual_seed(0)
    m = build_model("sam2.1_hiera_tiny", image_size=256)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights, none left at zero (object pointers, memory embeddings)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m.eval()


@pytest.fixture
def encoder_calls(model, monkeypatch):
    """Images through the image encoder (every path: the store's predictor and the tracker's own)."""
    calls: list[int] = []
    forward = model.image_encoder.forward

    def counting(x):
        calls.append(int(x.shape[0]))
        return forward(x)

    monkeypatch.setattr(model.image_encoder, "forward", counting)
    return calls


KEYFRAMES = {
    1: {2: Prompt(points=np.array([[39.0, 40.0]]), labels=np.array([1]))},
    2: {2: Prompt(box=np.array([74.0, 47.0, 102.0, 78.0])), 5: Prompt(points=np.array([[86.0, 66.0]]))},
}


def labels_of(result) -> np.ndarray:
    return result.to_labels()


def test_store_features_are_the_backbone(model):
    """The store's embedding turned back into ``forward_image``'s output: the same maps up to float16,
    the same position encodings."""
    vol = structured_stack(4)
    store = EmbeddingStore(SamPredictor(model, device="cpu"), vol)
    got = store_features(store)(1)
    frames = SliceFeatures(model, vol, contrast_limits=store.contrast_limits)
    with torch.inference_mode():
        ref = model.forward_image(frames.image(1))
    assert len(got["backbone_fpn"]) == len(ref["backbone_fpn"]) == 3
    for a, b in zip(got["backbone_fpn"], ref["backbone_fpn"], strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 2e-3 * float(b.abs().max()), float((a - b).abs().max())
    for a, b in zip(got["vision_pos_enc"], ref["vision_pos_enc"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got["vision_features"], got["backbone_fpn"][-1])


def test_browsed_slices_are_not_encoded_again(model, encoder_calls):
    """Two slices browsed (the widget encodes them into its store): tracking encodes the other six
    once each, into the store; a second run encodes nothing and gives the same masks."""
    vol = structured_stack(8)
    store = EmbeddingStore(SamPredictor(model, device="cpu"), vol)
    for z in (2, 3):
        store.get(z)
    assert sum(encoder_calls) == 2
    first = track_keyframes(store, KEYFRAMES)
    assert sum(encoder_calls) == 8 and store.stats["computed"] == 8
    assert all(store.is_cached(z) for z in range(8))
    second = track_keyframes(store, KEYFRAMES)
    assert sum(encoder_calls) == 8  # everything from the store
    np.testing.assert_array_equal(labels_of(first), labels_of(second))
    assert first.slices == second.slices and len(first.slices) >= 2
    # segment_volume with a SAM 2 store takes the same path
    np.testing.assert_array_equal(labels_of(segment_volume(store, seeds=KEYFRAMES)), labels_of(first))
    assert sum(encoder_calls) == 8


def test_masks_with_and_without_the_store(model, encoder_calls):
    """The same prompts through the tracker's own encoder (float32 features, one encoder call per
    slice visited) and through the store (float16): the masks agree on >= 99.9 % of the pixels of
    every slice and object, and the objects are found on the same slices."""
    vol = structured_stack(8)
    own = VolumeTracker(model, vol)
    own.add_prompts(KEYFRAMES)
    own.propagate("both")
    own_calls = sum(encoder_calls)
    assert own_calls >= 8
    store = EmbeddingStore(SamPredictor(model, device="cpu"), vol)
    fed = VolumeTracker(model, vol, features=store_features(store), contrast_limits=store.contrast_limits)
    fed.add_prompts(KEYFRAMES)
    fed.propagate("both")
    assert sum(encoder_calls) - own_calls == 8  # each slice once, however often the tracker reads it
    worst, differing = 1.0, 0
    for z in range(8):
        for oid in (1, 2):
            a = own.result.masks.get(z, {}).get(oid, np.zeros(own.hw, bool))
            b = fed.result.masks.get(z, {}).get(oid, np.zeros(own.hw, bool))
            worst, differing = min(worst, float((a == b).mean())), differing + int((a != b).sum())
    print(f"\nstore (float16) vs own encoder (float32): worst agreement {worst:.6f}, {differing} pixels differ")
    assert worst >= 0.999, worst
    for oid in (1, 2):
        assert own.found(oid) == fed.found(oid)
