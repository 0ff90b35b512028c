"""Console API of SegmentAnything for stacks and automatic masks (tiny random-weight model).

The assertions are about what the code guarantees (ids, placement, one undo step, equality with the
engines called directly on the same stack and seeds), never about mask quality.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _synthetic import ellipsoid_volume

from napari_sam import SegmentAnything
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamUserError
from napari_sam.volume.propagate import segment_volume
from napari_sam.volume.stops import DEFAULT_RULES
from napari_sam.volume.store import EmbeddingStore
from napari_sam.weights.registry import volume_overrides

NO_STOP = {"iou_threshold": float("-inf"), "overlap_threshold": 0.0}


@pytest.fixture
def stack_sam(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    img, _, info = ellipsoid_volume((8, 64, 64), n_objects=2, seed=1)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(img, name="stack"))
    return viewer, sam, img, info


def _engine(tiny_sam, vol, **kw):
    return segment_volume(EmbeddingStore(SamPredictor(tiny_sam, device="cpu"), vol, axis=0), **kw)


def test_boxes_on_two_slices_become_two_new_ids(stack_sam, tiny_sam):
    viewer, sam, img, info = stack_sam
    existing = np.zeros(img.shape, np.int32)
    existing[:, :6, :6] = 4
    sam.labels_layer = viewer.add_labels(existing.copy())
    boxes = [(8, 8, 30, 30), (34, 34, 60, 60)]  # (row0, col0, row1, col1)
    for z in (2, 5):
        for r0, c0, r1, c1 in boxes:
            corners = [[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]
            sam.boxes_layer.add_rectangles(np.array(corners, float))
    sam.add_point([2, 20, 20])
    viewer.dims.set_current_step(0, 3)
    seeds = sam.volume_seeds()
    assert sorted(seeds) == [1, 2] and sorted(seeds[1]) == [2, 5]
    np.testing.assert_array_equal(seeds[1][2].box, [8, 8, 30, 30])  # (x0, y0, x1, y1) = (c0, r0, c1, r1)
    np.testing.assert_array_equal(seeds[1][2].points, [[20, 20]])
    assert seeds[2][2].points is None
    ids = sam.segment_volume(**NO_STOP)
    ref = _engine(tiny_sam, img, seeds=seeds, **{**sam.volume_params, **NO_STOP})
    assert ids == [5, 6][: len(ref.ids)] and ids
    want = np.where(ref.to_labels() > 0, ref.to_labels() + 4, 0)
    np.testing.assert_array_equal(sam.labels_layer.data, np.where(existing > 0, existing, want))
    sam.labels_layer.undo()
    np.testing.assert_array_equal(sam.labels_layer.data, existing)


def test_stop_rules_follow_the_model(stack_sam, tiny_sam):
    """A model with its own stop rules in the registry gets them when it is set; others get the defaults."""
    viewer, sam, img, info = stack_sam
    assert sam.volume_params["max_extent"] == DEFAULT_RULES.max_extent
    own = volume_overrides("lite_medsam_nuclei")
    tiny_sam.model_name = "lite_medsam_nuclei"  # the name decides (the network stays the tiny one)
    sam.set_model(tiny_sam, device="cpu")
    assert {k: sam.volume_params[k] for k in own} == own
    sam.add_point([3, 20, 20])
    viewer.dims.set_current_step(0, 3)
    seeds = sam.volume_seeds()
    sam.segment_volume()
    ref = _engine(tiny_sam, img, seeds=seeds, **{**sam.volume_params, **own})
    np.testing.assert_array_equal(sam.labels_layer.data, ref.to_labels())
    tiny_sam.model_name = "nano_nuclei"  # no rules of its own: back to the defaults
    sam.set_model(tiny_sam, device="cpu")
    assert all(sam.volume_params[k] == getattr(DEFAULT_RULES, k) for k in own)


def test_4d_writes_the_current_time_point_only(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    img, _, info = ellipsoid_volume((6, 48, 48), n_objects=1, seed=3)
    data = np.stack([img, img[::-1]])  # (T, Z, Y, X)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(data))
    cz, cy, cx = info[0]["center"]
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, int(cz))
    st = sam.stack()
    assert st.outer == (1,) and st.axis == 1 and st.n == 6
    sam.add_point([1, int(cz), cy, cx])
    ids = sam.segment_volume(**NO_STOP)
    assert ids == [1]
    lab = sam.labels_layer.data
    assert lab[1].any() and not lab[0].any()
    ref = _engine(tiny_sam, data[1], seeds={1: {int(cz): {"points": [[cx, cy]]}}}, **{**sam.volume_params, **NO_STOP})
    np.testing.assert_array_equal(lab[1] > 0, ref.to_labels() > 0)


def test_extend_labels_keeps_ids(stack_sam, tiny_sam):
    viewer, sam, img, info = stack_sam
    lab = np.zeros(img.shape, np.int32)
    lab[2, 10:30, 10:30] = 3
    lab[6, 12:28, 12:28] = 3
    sam.labels_layer = viewer.add_labels(lab.copy())
    viewer.dims.set_current_step(0, 2)
    written = sam.extend_labels(**NO_STOP)
    ref = _engine(tiny_sam, img, labels=lab, **{**sam.volume_params, **NO_STOP})
    assert written == [3]
    out = sam.labels_layer.data.copy()
    assert set(np.unique(out)) <= {0, 3}
    ref_lab = ref.to_labels()
    np.testing.assert_array_equal(out[ref.slices] > 0, ref_lab[ref.slices] > 0)
    np.testing.assert_array_equal(out[2], lab[2])  # labelled slices keep their masks
    sam.labels_layer.undo()
    np.testing.assert_array_equal(sam.labels_layer.data, lab)


def test_precompute_and_cancel(stack_sam):
    viewer, sam, img, info = stack_sam
    seen = []
    stop = threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done == 3:
            stop.set()

    assert sam.precompute_embeddings(progress, stop) == 3
    assert seen[-1] == (3, 8)
    assert sam.precompute_embeddings() == 5
    store = sam.volume_store()
    assert sam.stored_embedding((6,)) is not None
    computed = store.stats["computed"]
    sam.embedding((6,))  # interactive lookup served by the store
    assert store.stats["computed"] == computed and sam.has_embedding((6,))
    sam.add_point([4, 30, 30])
    viewer.dims.set_current_step(0, 4)
    ids = sam.segment_volume(cancel=lambda: True)
    assert ids == [] and sam.last_volume.cancelled and not sam.labels_layer.data.any()


def test_segment_everything_slice_and_stack(stack_sam, tiny_sam):
    viewer, sam, img, info = stack_sam
    viewer.dims.set_current_step(0, 3)
    kw = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    ids = sam.segment_everything(**kw)
    gen = AutomaticMaskGenerator(SamPredictor(tiny_sam, device="cpu"), **kw)
    ref = gen.generate_labels(to_sam_image(img[3]))
    assert ids == list(range(1, ref.max() + 1)) and ids
    np.testing.assert_array_equal(sam.labels_layer.data[3], ref)
    assert not sam.labels_layer.data[[0, 1, 2, 4, 5, 6, 7]].any()
    n = int(ref.max())
    sam.segment_everything(stack=True, **kw)
    ref3 = gen.generate_labels_stack(img)
    data = sam.labels_layer.data
    want = np.where(ref3 > 0, ref3 + n, 0)
    want[3] = np.where(ref > 0, ref, want[3])  # the first run's objects are kept
    np.testing.assert_array_equal(data, want)
    sam.labels_layer.undo()
    np.testing.assert_array_equal(sam.labels_layer.data[3], ref)
    assert sam.segment_everything(cancel=lambda: True, **kw) == []


def test_segment_everything_default_thresholds_follow_the_model(stack_sam, tiny_sam):
    """Parameters not given are the model's (registry): nano_nuclei's 0.5/0.9/0.2, SAM's 0.88/0.95/0.7."""
    viewer, sam, img, info = stack_sam
    viewer.dims.set_current_step(0, 3)
    assert sam.automatic_defaults()["pred_iou_thresh"] == 0.88
    sam.model_name = "nano_nuclei"  # the name decides (the network stays the tiny one)
    kw = sam.automatic_defaults()
    assert kw == {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.9, "box_nms_thresh": 0.2}
    sam.segment_everything(points_per_side=4)
    gen = AutomaticMaskGenerator(SamPredictor(tiny_sam, device="cpu"), points_per_side=4, **kw)
    np.testing.assert_array_equal(sam.labels_layer.data[3], gen.generate_labels(to_sam_image(img[3])))


def test_2d_image_has_no_stack(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(np.zeros((32, 32), np.uint8)))
    with pytest.raises(SamUserError, match="slider axis"):
        sam.segment_volume()
    with pytest.raises(SamUserError, match="slider axis"):
        sam.precompute_embeddings()


def test_segment_everything_tiles_follow_the_model(make_napari_viewer, tiny_sam):
    """A model whose registry entry segments in tiles (lite_medsam_nano_nuclei: 256 px) gets them on an
    image larger than that; ``tile_size=None`` asks for the whole image."""
    viewer = make_napari_viewer()
    img = (np.random.default_rng(3).random((300, 400)) * 255).astype(np.uint8)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(img))
    sam.model_name = "lite_medsam_nano_nuclei"  # the name decides (the network stays the tiny one)
    kw = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    sam.segment_everything(**kw)
    tiled = AutomaticMaskGenerator(SamPredictor(tiny_sam, device="cpu"), **kw, box_nms_thresh=0.2,
                                   tile_size=256, tile_overlap=64, crop_nms_thresh=0.2)
    whole = AutomaticMaskGenerator(SamPredictor(tiny_sam, device="cpu"), **kw, box_nms_thresh=0.2)
    ref, ref_whole = tiled.generate_labels(to_sam_image(img)), whole.generate_labels(to_sam_image(img))
    assert ref_whole.any() and not np.array_equal(ref, ref_whole)  # tiles matter here
    np.testing.assert_array_equal(sam.labels_layer.data, ref)
    sam.labels_layer.data = np.zeros_like(sam.labels_layer.data)
    sam.segment_everything(tile_size=None, **kw)
    np.testing.assert_array_equal(sam.labels_layer.data, ref_whole)
