"""``SliceEmbeddings`` (per-slice cache and encode jobs) with ``ImageSource``, ``ModelSlot`` and ``StackStores``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamUserError
from napari_sam.viewer.embeddings import SliceEmbeddings
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.stores import StackStores


@pytest.fixture
def parts(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    vol = (rng.random((4, 40, 50)) * 3000).astype(np.uint16)
    images = ImageSource(viewer)
    images.layer = viewer.add_image(vol, contrast_limits=(0, 3000))
    models = ModelSlot()
    models.set(tiny_sam, device="cpu")
    stores = StackStores(images, models)
    stored: list[tuple] = []
    emb = SliceEmbeddings(images, models, stores, cache_size=2, on_stored=stored.append)
    return viewer, vol, images, models, stores, emb, stored


def test_slice_embedding_is_the_encoders_and_cached(parts, tiny_sam):
    viewer, vol, images, models, stores, emb, stored = parts
    e = emb.get((2,))
    ref = SamPredictor(tiny_sam, device="cpu").compute_embedding(to_sam_image(vol[2], contrast_limits=(0, 3000)))
    torch.testing.assert_close(e.features, ref.features)
    assert emb.has((2,)) and not emb.has((1,)) and stored == [emb.key((2,))]
    assert emb.get((2,)) is e  # cached
    images.layer.contrast_limits = (0, 1000)  # another SAM image: another key
    assert not emb.has((2,))
    emb.get((0,))
    emb.get((1,))
    assert len(emb.cache) == 2  # LRU of cache_size


def test_stale_embeddings_are_not_stored(parts, tiny_sam):
    viewer, vol, images, models, stores, emb, stored = parts
    key, job = emb.encode_job((1,))
    result = job()
    models.set(tiny_sam, device="cpu")  # a new model version while the job ran
    emb.store(key, result)
    assert len(emb.cache) == 0 and stored == []
    with pytest.raises(SamUserError, match="image layer"):
        ImageSource(viewer).require()


def test_use_requests_in_the_background_or_computes(parts):
    viewer, vol, images, models, stores, emb, stored = parts
    asked = []
    emb.request = asked.append
    assert emb.use((3,), sync=False) is False and asked == [(3,)] and len(emb.cache) == 0
    assert emb.use((3,), sync=True) is True and emb.has((3,))
    assert models.predictor.is_image_set


def test_stack_store_embeddings_are_reused(parts):
    viewer, vol, images, models, stores, emb, stored = parts
    stores.store((0,)).precompute()
    assert stores.stored_embedding((2,)) is not None

    def fail(*a, **k):
        raise AssertionError("encoded again")

    models.predictor.compute_embedding = fail
    e = emb.get((2,))
    torch.testing.assert_close(e.features.float(), stores.stored_embedding((2,)).features.float())
    models.set_tiled(True)  # a slice that fits one tile is embedded as without tiles: the store's serves
    assert stores.stored_embedding((2,)) is not None


def test_tiled_slices_do_not_take_whole_slice_store_embeddings(make_napari_viewer, tiny_sam):
    """A slice larger than the model's input is cut into tiles: the store's whole-slice embedding
    (shrunk to the input) must not stand in for them."""
    viewer = make_napari_viewer()
    side = tiny_sam.image_encoder.img_size
    vol = np.random.default_rng(0).integers(0, 255, (2, side + 40, side // 2), dtype=np.uint8)
    images = ImageSource(viewer)
    images.layer = viewer.add_image(vol)
    models = ModelSlot()
    models.set(tiny_sam, device="cpu")
    stores = StackStores(images, models)
    stores.store((0,)).precompute()
    models.set_tiled(False)
    assert stores.stored_embedding((1,)) is not None
    models.set_tiled(True)
    assert stores.stored_embedding((1,)) is None
