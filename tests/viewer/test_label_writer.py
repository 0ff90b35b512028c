"""``LabelWriter``: the one place that writes the output Labels layer (new ids, one undo step per
object or action, other objects' pixels kept, nothing written when the layer does not fit)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.errors import SamUserError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.label_writer import LABELS_NAME, LabelWriter


@pytest.fixture
def writer(make_napari_viewer):
    viewer = make_napari_viewer()
    images = ImageSource(viewer)
    images.layer = viewer.add_image(np.zeros((3, 20, 30), np.uint8), scale=(2, 0.5, 0.5), translate=(1, 2, 3))
    calls: dict[str, list] = {"layer": [], "written": []}
    w = LabelWriter(
        viewer, images, on_layer=lambda layer, created: calls["layer"].append((layer, created)),
        on_written=calls["written"].append,
    )
    return viewer, w, calls


def _box(r0, c0, r1, c1, shape=(20, 30)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_layer_created_once_image_shaped(writer):
    viewer, w, calls = writer
    assert w.existing is None
    layer = w.layer
    assert layer.name == LABELS_NAME and layer in viewer.layers
    assert layer.data.shape == (3, 20, 30) and layer.data.dtype == np.int32 and not layer.data.any()
    np.testing.assert_array_equal(layer.scale, (2, 0.5, 0.5))
    np.testing.assert_array_equal(layer.translate, (1, 2, 3))
    assert w.layer is layer and w.existing is layer
    assert calls["layer"] == [(layer, True)]
    with pytest.raises(SamUserError, match="not a Labels layer"):
        w.layer = viewer.layers[0]
    w.layer = None
    assert calls["layer"][-1] == (None, False)


def test_each_object_is_one_undo_step_with_a_new_id(writer):
    viewer, w, calls = writer
    existing = np.zeros((3, 20, 30), np.int32)
    existing[1, 0:5, 0:5] = 7
    w.layer = viewer.add_labels(existing.copy())
    labels = w.layer
    ids = w.write_objects((1,), np.stack([_box(2, 2, 10, 10), _box(12, 12, 18, 28)]))
    assert ids == [8, 9] and calls["written"] == [[8, 9]]
    assert (labels.data[1, 0:5, 0:5] == 7).all()  # the other object's pixels are kept
    assert (labels.data[1, 5:10, 5:10] == 8).all() and (labels.data[1, 2:5, 5:10] == 8).all()
    assert (labels.data[1, 12:18, 12:28] == 9).all()
    assert not labels.data[[0, 2]].any()  # only the slice written
    labels.undo()
    assert 9 not in labels.data and (labels.data[1, 5:10, 5:10] == 8).all()
    labels.undo()
    np.testing.assert_array_equal(labels.data, existing)
    labels.redo()
    assert 8 in labels.data and 9 not in labels.data


def test_overwrite_and_objects_without_free_pixels(writer):
    viewer, w, _ = writer
    existing = np.zeros((3, 20, 30), np.int32)
    existing[0, :10, :10] = 3
    w.layer = viewer.add_labels(existing.copy())
    assert w.write_objects((0,), _box(0, 0, 10, 10)[None]) == []  # every pixel taken: no id
    np.testing.assert_array_equal(w.layer.data, existing)
    w.overwrite = True
    assert w.write_objects((0,), _box(0, 0, 5, 5)[None]) == [4]
    assert (w.layer.data[0, :5, :5] == 4).all() and (w.layer.data[0, 5:10, 5:10] == 3).all()


def test_write_slices_is_one_undo_step(writer):
    viewer, w, calls = writer
    existing = np.zeros((3, 20, 30), np.int32)
    existing[0, :4, :4] = 2
    existing[2, 10:, 10:] = 5
    w.layer = viewer.add_labels(existing.copy())
    new = np.zeros((20, 30), np.int32)
    new[:8, :8] = 6
    slices = {(0,): (new, []), (1,): (new, []), (2,): (new, [5])}  # on slice 2, object 5 is replaced
    assert w.write_slices(slices) == [6] and calls["written"][-1] == [6]
    data = w.layer.data
    assert (data[0, :4, :4] == 2).all() and (data[0, 4:8, 4:8] == 6).all()  # kept, no overwrite
    assert (data[1, :8, :8] == 6).all() and (data[2, :8, :8] == 6).all() and 5 not in data
    assert w.next_label() == 7
    w.layer.undo()  # the whole action at once
    np.testing.assert_array_equal(w.layer.data, existing)


def test_a_layer_that_does_not_fit_is_not_written(writer):
    viewer, w, calls = writer
    w.layer = viewer.add_labels(np.zeros((3, 20, 31), np.int32))
    with pytest.raises(SamUserError, match="needs"):
        w.write_objects((0,), _box(0, 0, 5, 5)[None])
    with pytest.raises(SamUserError, match="needs"):
        w.write_slices({(0,): (np.ones((20, 30), np.int32), [])})
    assert not w.layer.data.any() and calls["written"] == []
