"""Viewer-side faults (issue 23): a Labels layer at the top of its dtype, negative or out-of-range
slice indices, multiscale images, layers removed while a job runs, an output layer that no longer
fits the image. Each ends with a clear message or a defined result; the layers' data are compared
with copies."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari_sam.viewer.label_writer as lw
import napari_sam.viewer.segment_anything as sa
from napari_sam.errors import SamTypeError, SamUserError, TooMuchWorkError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.label_writer import LabelWriter, promoted_dtype
from napari_sam.viewer.segment_anything import SegmentAnything
from napari_sam.viewer.slicing import check_index


@pytest.fixture
def warned(monkeypatch):
    seen: list[str] = []
    for mod in (lw, sa):
        monkeypatch.setattr(mod, "show_warning", lambda msg: seen.append(str(msg)))
    return seen


def _writer(viewer, labels_data):
    images = ImageSource(viewer)
    images.layer = viewer.add_image(np.zeros(labels_data.shape, np.uint8))
    w = LabelWriter(viewer, images)
    w.layer = viewer.add_labels(labels_data.copy(), name="full")
    return w


def _masks(shape, *boxes):
    out = np.zeros((len(boxes), *shape), bool)
    for m, (r0, c0, r1, c1) in zip(out, boxes, strict=True):
        m[r0:r1, c0:c1] = True
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8])
def test_commit_into_full_dtype_promotes_keeping_values_and_undo(make_napari_viewer, warned, dtype):
    top = np.iinfo(dtype).max
    data = np.zeros((20, 30), dtype)
    data[:4, :4], data[5:8, :4] = top, 3
    w = _writer(make_napari_viewer(), data)
    ids = w.write_objects((), _masks((20, 30), (10, 10, 15, 15), (15, 20, 18, 25)))
    labels = w.layer
    assert ids == [top + 1, top + 2]
    assert labels.data.dtype == np.int32
    expected = data.astype(np.int32)
    expected[10:15, 10:15], expected[15:18, 20:25] = top + 1, top + 2
    np.testing.assert_array_equal(labels.data, expected)
    assert len(warned) == 1 and f"was {np.dtype(dtype)}" in warned[0] and "int32" in warned[0]
    labels.undo()
    labels.undo()
    np.testing.assert_array_equal(labels.data, data)  # every value as before, in the wider dtype
    labels.redo()
    labels.redo()
    np.testing.assert_array_equal(labels.data, expected)


def test_write_slices_promotes_and_wide_layers_keep_their_values(make_napari_viewer, warned):
    viewer = make_napari_viewer()
    data = np.zeros((2, 10, 12), np.uint8)
    data[0, :2, :2] = 250
    w = _writer(viewer, data)
    new = np.zeros((10, 12), np.int64)
    new[5:7, 5:7] = 300
    assert w.write_slices({(1,): (new, [])}) == [300]
    assert w.layer.data.dtype == np.int32 and w.layer.data[1, 5, 5] == 300 and w.layer.data[0, 0, 0] == 250
    # int64 ids above 2**16 (and 2**32) keep their values and dtype; no warning
    big = np.zeros((10, 12), np.int64)
    big[:2, :2] = 2**40
    w2 = _writer(viewer, big)
    ids = w2.write_objects((), _masks((10, 12), (5, 5, 8, 8)))
    assert ids == [2**40 + 1] and w2.layer.data.dtype == np.int64 and w2.layer.data[0, 0] == 2**40
    assert len(warned) == 1
    assert promoted_dtype(np.uint32, 2**32) == np.int64 and promoted_dtype(np.uint64, 2**64) is None


def test_full_layer_that_cannot_be_promoted_is_refused_and_untouched(make_napari_viewer, warned):
    data = np.zeros((10, 12), np.int64)
    data[:2, :2] = np.iinfo(np.int64).max
    w = _writer(make_napari_viewer(), data)
    with pytest.raises(SamUserError, match="nothing was written"):
        w.write_objects((), _masks((10, 12), (5, 5, 8, 8)))
    np.testing.assert_array_equal(w.layer.data, data)
    assert w.layer.data.dtype == np.int64 and not w.layer._undo_history


def test_negative_and_out_of_range_slice_indices_are_refused(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).integers(0, 255, (10, 40, 50), dtype=np.uint8))
    assert check_index(layer, (3,)) == (3,) and check_index(layer, np.array([9])) == (9,)
    for bad in [(-3,), (10,), (1, 2), (2.5,)]:
        with pytest.raises(SamUserError, match="slice index"):
            check_index(layer, bad)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(layer)
    with pytest.raises(SamUserError, match="negative indices do not count from the end"):
        sam.segment(points=[[-3, 20, 25]])
    with pytest.raises(SamUserError, match="outside the image"):
        sam.segment(points=[[20, 25]], index=(-3,))
    with pytest.raises(SamUserError, match="outside the image"):
        sam.segment_everything(points_per_side=2, index=(-1,))
    with pytest.raises(SamUserError, match="outside the image"):
        sam.precompute_embeddings(index=(12,))
    with pytest.raises(SamUserError, match="outside the stack"):
        sam.segment_volume(seeds_xy={1: {-3: {"points": [[25, 20]], "labels": [1]}}})
    assert not sam.labels_layer.data.any() and not sam.cache._items


def test_multiscale_image_uses_its_highest_resolution_level(make_napari_viewer, tiny_sam, monkeypatch):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (64, 80), dtype=np.uint8)
    layer = viewer.add_image([base, base[::2, ::2]], multiscale=True, name="pyramid")
    plain = viewer.add_image(base, name="plain")
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(plain)
    ref = sam.segment(points=[[30, 40]])
    sam.set_image_layer(layer)
    mask = sam.segment(points=[[30, 40]], commit=True)
    np.testing.assert_array_equal(mask, ref)  # level 0 == the plain image
    assert sam.labels_layer.data.shape == (64, 80) and sam.labels_layer.data.any()
    import napari_sam.viewer.slicing as slicing

    monkeypatch.setattr(slicing, "MAX_MULTISCALE_PIXELS", 1000)
    sam.set_image_layer(plain)
    with pytest.raises(SamUserError, match="multiscale layers are not supported yet"):
        sam.set_image_layer(layer)


def test_labels_removed_or_image_removed_mid_job_writes_nothing(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    img = np.random.default_rng(2).integers(0, 255, (40, 50), dtype=np.uint8)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(img, name="img"))
    labels = sam.labels_layer
    job, apply = sam.everything_job(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    result = job()
    viewer.layers.remove(labels)
    with pytest.raises(SamUserError, match="labels layer 'SAM labels' was removed"):
        apply(result)
    assert sam.existing_labels_layer is None and not labels.data.any()
    assert not [ly for ly in viewer.layers if ly.name.startswith("SAM labels")]  # no new layer behind the user's back
    keep = viewer.add_labels(np.zeros(img.shape, np.int32), name="keep")
    sam.labels_layer = keep
    job, apply = sam.everything_job(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    result = job()
    viewer.layers.remove("img")
    with pytest.raises(SamUserError, match="image layer 'img' was removed"):
        apply(None)  # cancelled by the widget: still says why, not "no mask passed"
    with pytest.raises(SamUserError, match="image layer 'img' was removed"):
        apply(result)
    assert not keep.data.any() and not keep._undo_history


def test_switching_to_a_3d_image_lets_the_2d_labels_go(make_napari_viewer, tiny_sam, warned):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(3)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(rng.integers(0, 255, (40, 50), dtype=np.uint8), name="2d"))
    sam.segment(points=[[20, 25]], commit=True)
    old = sam.labels_layer
    before = old.data.copy()
    sam.set_image_layer(viewer.add_image(rng.integers(0, 255, (4, 40, 50), dtype=np.uint8), name="3d"))
    assert sam.existing_labels_layer is None
    assert any("does not fit the image '3d'" in w for w in warned)
    sam.segment(points=[[2, 20, 25]], commit=True)  # works at once, into a new, fitting layer
    new = sam.labels_layer
    assert new is not old and new.data.shape == (4, 40, 50) and new.data[2].any() and not new.data[[0, 1, 3]].any()
    np.testing.assert_array_equal(old.data, before)
    # a fitting layer is kept as it is
    sam.set_image_layer(viewer.add_image(rng.integers(0, 255, (4, 40, 50), dtype=np.uint8), name="3d-b"))
    assert sam.existing_labels_layer is new


def test_four_boxes_as_a_list_of_tuples(make_napari_viewer, tiny_sam):
    """A box list is N x 4: exactly four boxes as 4-tuples are four objects, not "ambiguous"."""
    viewer = make_napari_viewer()
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(np.random.default_rng(0).integers(0, 255, (60, 80), np.uint8)))
    boxes = [(2, 3, 20, 30), (25, 30, 50, 70), (5, 40, 30, 75), (35, 2, 58, 25)]
    masks = sam.segment(box=boxes)
    assert masks.shape == (4, 60, 80)
    np.testing.assert_array_equal(masks, sam.segment(box=[list(b) for b in boxes]))
    np.testing.assert_array_equal(masks[:3], sam.segment(box=boxes[:3]))  # one batched call, same per box
    with pytest.raises(SamUserError, match=r"ambiguous \(4, 4\) box array.*list of 4-tuples.*\[corners\]"):
        sam.segment(box=np.array(boxes))
    with pytest.raises(SamTypeError, match=r"box must be numbers in napari \(row, col\) order"):
        sam.segment(box=["a", "b", "c", "d"])
    assert sam.existing_labels_layer is None


def test_segment_volume_seeds_name_says_xy(make_napari_viewer, tiny_sam):
    """``segment`` takes napari (row, col), ``segment_volume``'s seeds SAM (x, y): the argument is
    ``seeds_xy``; the old ``seeds=`` still works, with a FutureWarning; (z, y, x) rows are refused
    before any work starts."""
    viewer = make_napari_viewer()
    vol = np.random.default_rng(1).integers(0, 255, (4, 40, 50), np.uint8)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(vol))
    seeds = {1: {2: {"points": [[30, 10]]}}}  # x = 30 (column), y = 10 (row)
    stop = {"iou_threshold": float("-inf"), "overlap_threshold": 0, "min_area": 0}
    ids = sam.segment_volume(seeds_xy=seeds, **stop)
    new = sam.labels_layer.data.copy()
    sam.labels_layer.undo()
    with pytest.warns(FutureWarning, match=r"renamed seeds_xy=.*SAM \(x, y\).*not napari \(row, col\)"):
        assert sam.segment_volume(seeds=seeds, **stop) == ids
    np.testing.assert_array_equal(sam.labels_layer.data, new)
    with pytest.raises(SamTypeError, match="not both"):
        sam.segment_volume(seeds_xy=seeds, seeds=seeds)
    before = sam.labels_layer.data.copy()
    with pytest.raises(SamUserError, match=r"napari \(z, y, x\) rows"):
        sam.volume_job(seeds_xy={1: {2: {"points": [[2, 10, 30]]}}})  # refused on the calling thread
    with pytest.raises(SamTypeError, match=r"seeds_xy must be \{object id: \{slice: Prompt or dict\}\}"):
        sam.segment_volume(seeds_xy={1: [[30, 10]]})
    np.testing.assert_array_equal(sam.labels_layer.data, before)


def test_tiles_on_a_huge_image_are_refused_until_allowed(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(np.zeros((6000, 6000), np.uint8), name="huge"))
    sam.tiled = True
    n = sam.predictor.encodings((6000, 6000))
    with pytest.raises(TooMuchWorkError, match=rf"needs {n} encoder runs.*sam\.max_tile_encodings = {n}"):
        sam.segment(points=[[100, 100]])
    assert sam.existing_labels_layer is None and not sam.has_embedding()
    sam.max_tile_encodings = n  # the way ahead the message names reaches the predictor in use
    assert sam.predictor.max_encodings == n
    sam.tiled = False
    sam.tiled = True
    assert sam.predictor.max_encodings == n


def test_a_second_job_from_the_console_is_refused_while_one_runs(make_napari_viewer, tiny_sam):
    """Two long jobs would share the background predictor (one image's embedding at a time): the
    second is refused at once (never waits on the GUI thread) and writes nothing."""
    viewer = make_napari_viewer()
    vol = np.random.default_rng(1).integers(0, 255, (6, 40, 50), np.uint8)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(vol))
    job, apply = sam.volume_job(seeds_xy={1: {2: {"points": [[30, 10]]}}}, iou_threshold=float("-inf"),
                                overlap_threshold=0, min_area=0)
    reached, gate, out = threading.Event(), threading.Event(), []

    def hold(done, total):
        reached.set()
        gate.wait(30)

    worker = threading.Thread(target=lambda: out.append(job(hold, None)))
    worker.start()
    try:
        assert reached.wait(30)
        before = sam.labels_layer.data.copy()
        for call in (lambda: sam.segment_everything(points_per_side=2), sam.precompute_embeddings,
                     lambda: sam.segment_volume(seeds_xy={1: {3: {"points": [[5, 5]]}}})):
            with pytest.raises(SamUserError, match=r"SAM is busy with '3D segmentation'.*wait for it to finish "
                               r"or cancel it.*nothing was written"):
                call()
        np.testing.assert_array_equal(sam.labels_layer.data, before)
    finally:
        gate.set()
        worker.join(30)
    assert apply(out[0]) == [1]  # the first job is unharmed
    assert sam.segment_everything(points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)  # free again
