"""``SegmentAnything``, the console/scripting object: prompts in napari data coordinates -> masks -> labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamUserError
from napari_sam.viewer.segment_anything import SegmentAnything
from napari_sam.viewer.slicing import EmbeddingCache, box_rc_to_xy, rc_to_xy


def _blobs(seed=0, shape=(100, 140)):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 60).astype(np.uint8) + np.uint8(40)


def _direct(model, image, pts=None, labels=None, box=None, multimask=False):
    p = SamPredictor(model, device="cpu")
    p.set_image(image)
    masks, scores, _ = p.predict(pts, labels, box, multimask_output=multimask)
    return masks[int(np.argmax(scores))]


def test_coordinate_conversion_is_row_col_to_xy():
    np.testing.assert_array_equal(rc_to_xy([[3, 7], [1, 2]]), [[7, 3], [2, 1]])
    np.testing.assert_array_equal(box_rc_to_xy([[10, 20], [5, 40]]), [20, 5, 40, 10])


def test_embedding_cache_keeps_decoder_preparations_of_its_most_recent_entries():
    """The cache drops the decoder's preparation (``ImageEmbedding.prepared``, ~6x the features'
    memory) from all but its ``keep_prepared`` most recently stored or used entries; the
    embeddings themselves stay."""
    import torch

    from napari_sam.engine.predictor import ImageEmbedding

    cache = EmbeddingCache(maxsize=4, keep_prepared=2)
    embs = {k: ImageEmbedding(torch.zeros(1, 2, 4, 4), (8, 8), (8, 8), prepared=object()) for k in "abcde"}
    cache.put("a", embs["a"])
    cache.put("b", embs["b"])
    assert cache.get("a").prepared is not None  # used: now more recent than "b"
    cache.put("c", embs["c"])
    assert cache._items["b"].prepared is None and cache._items["b"].features is embs["b"].features
    assert cache._items["c"].prepared is not None and cache._items["a"].prepared is not None
    cache.put("d", embs["d"])
    cache.put("e", embs["e"])  # "b" (least recent) leaves; "a" and "c" lose their preparation
    assert "b" not in cache and len(cache) == 4
    assert [k for k in "acde" if cache._items[k].prepared is not None] == ["d", "e"]
    assert cache.get("a").prepared is None  # used again: it stays without (prepared again on clicks)
    assert embs["c"].prepared is not None  # the caller's object is not changed
    cache.put("x", "not an embedding")  # values without a preparation are left alone
    assert cache.get("x") == "not an embedding"


def test_segment_points_box_commit_undo(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    img = _blobs()
    layer = viewer.add_image(img, name="img")
    sam = SegmentAnything(viewer)
    with pytest.raises(SamUserError):
        sam.segment(points=[[1, 1]])  # no image layer yet
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(layer)
    emb = sam.embedding()
    assert emb.original_size == img.shape
    mask = sam.segment(points=[[30, 50], [60, 90]], labels=[1, 0])
    ref = _direct(tiny_sam, img, np.array([[50, 30], [90, 60]], float), np.array([1, 0], float))
    np.testing.assert_array_equal(mask, ref)
    np.testing.assert_array_equal(sam.preview_layer.data > 0, ref)
    mask = sam.segment(box=(10, 20, 70, 110), commit=True)  # (row0, col0, row1, col1)
    ref = _direct(tiny_sam, img, box=np.array([20, 10, 110, 70], float))
    np.testing.assert_array_equal(mask, ref)
    np.testing.assert_array_equal(sam.labels_layer.data, ref.astype(np.int32))
    corners = np.array([[10, 20], [10, 110], [70, 110], [70, 20]])  # napari rectangle corners
    np.testing.assert_array_equal(sam.segment(box=corners), ref)
    two = sam.segment(box=[(5, 5, 40, 60), (50, 70, 95, 135)], commit=True)
    assert two.shape == (2, *img.shape)
    assert set(np.unique(sam.labels_layer.data)) <= {0, 1, 2, 3}
    sam.labels_layer.undo()
    assert 3 not in sam.labels_layer.data and 1 in sam.labels_layer.data


def test_segment_nd_points_pick_the_slice(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    vol = np.stack([_blobs(s) for s in range(4)])
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(vol))
    mask = sam.segment(points=[[2, 30, 40]], multimask=True)
    ref = _direct(tiny_sam, vol[2], np.array([[40, 30]], float), np.array([1.0]), multimask=True)
    np.testing.assert_array_equal(mask, ref)
    cand, score = sam.cycle_mask()
    np.testing.assert_array_equal(sam.objects[0], sam.candidates[cand])
    assert sam.commit() == [1]
    assert sam.labels_layer.data[2].any() and not sam.labels_layer.data[[0, 1, 3]].any()
    with pytest.raises(SamUserError, match="several slices"):
        sam.segment(points=[[1, 3, 3], [2, 3, 3]])


def test_nuclei_sample():
    from napari_sam.viewer.sample_data import nuclei_sample

    [(data, kwargs, kind)] = nuclei_sample()
    assert kind == "image" and data.ndim == 2 and data.shape[0] >= 256 and "name" in kwargs


def test_tiled_option_survives_a_model_change(make_napari_viewer, tiny_sam):
    """``sam.tiled = True`` before the model: the predictor is tiled; a box on a large image gives
    ``TiledPredictor``'s mask; turning it off forgets the tiled embeddings."""
    from napari_sam.engine.tiling import TiledEmbedding, TiledPredictor

    viewer = make_napari_viewer()
    img = _blobs(shape=(520, 600))
    sam = SegmentAnything(viewer)
    sam.tiled = True
    sam.set_model(tiny_sam, device="cpu")
    assert isinstance(sam.predictor, TiledPredictor)
    sam.set_image_layer(viewer.add_image(img))
    _, job = sam.encode_job()
    assert job.steps == TiledPredictor(tiny_sam, device="cpu").encodings(img.shape) > 1  # the progress bar's total
    mask = sam.segment(box=(200, 300, 260, 380))  # (row0, col0, row1, col1)
    tp = TiledPredictor(tiny_sam, device="cpu")
    tp.set_image(img)
    ref, _, _ = tp.predict(box=np.array([300, 200, 380, 260], float), multimask_output=False)
    np.testing.assert_array_equal(mask, ref[0])
    assert isinstance(sam.embedding(), TiledEmbedding)
    sam.tiled = False
    assert len(sam.cache) == 0 and not isinstance(sam.embedding(), TiledEmbedding)


# the public API documented in docs/widget.md (the dock widget and console users call these)
PUBLIC = (
    "set_model load set_image_layer labels_layer existing_labels_layer points_layer boxes_layer preview_layer "
    "overwrite multimask channel_axis tiled current_index embedding embedding_key has_embedding encode_job "
    "store_embedding stored_embedding segment decode update_preview clear_preview cycle_mask commit add_point "
    "read_prompts clear_prompts set_preview ensure_prompt_layers raise_prompt_layers forget_layer stack "
    "volume_store volume_seeds segment_volume extend_labels precompute_embeddings volume_job precompute_job "
    "volume_params last_volume store_budget cache_dir background_predictor drop_stores segment_everything "
    "everything_job automatic_defaults events model model_name predictor device cache request_embedding objects "
    "candidates scores candidate preview_index notify"
).split()


def test_facade_exposes_the_public_api_of_its_parts(make_napari_viewer, tiny_sam):
    """Every documented name is there; settings written on the façade land in the part that uses them;
    a commit writes through the label writer and announces the ids."""
    viewer = make_napari_viewer()
    sam = SegmentAnything(viewer)
    missing = [name for name in PUBLIC if not hasattr(sam, name)]
    assert not missing
    sam.overwrite, sam.multimask, sam.store_budget, sam.cache_dir = True, False, 123, "/tmp/x"
    assert sam.writer.overwrite and not sam.preview.multimask
    assert (sam.stores.budget, sam.stores.cache_dir) == (123, "/tmp/x")
    sam.request_embedding = print
    assert sam.embeddings.request is print
    sam.request_embedding = None
    sam.set_model(tiny_sam, device="cpu")
    layer = viewer.add_image(_blobs())
    sam.set_image_layer(layer)
    assert sam.image_layer is layer and sam.image_source.layer is layer
    assert sam.existing_labels_layer is None and "SAM labels" not in viewer.layers  # not created by asking
    committed = []
    sam.events.committed.connect(lambda e: committed.append(e.value))
    sam.segment(box=(10, 20, 70, 110), commit=True)
    assert committed == [[1]] and sam.existing_labels_layer is sam.labels_layer
    assert sam.objects is None and sam.preview_index is None  # the preview became an object


def test_tiles_keep_stack_stores_a_new_model_drops_them(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(np.stack([_blobs(s) for s in range(3)])))
    store = sam.volume_store((1,))
    sam.embedding((1,))
    sam.tiled = True  # the same model: the store stays, the slice embeddings go
    assert sam.volume_store((1,)) is store and len(sam.cache) == 0
    sam.set_model(tiny_sam, device="cpu")
    assert sam.volume_store((1,)) is not store
    viewer.layers.remove(sam.image_layer)
    assert len(sam.stores) == 0 and sam.image_layer is None
