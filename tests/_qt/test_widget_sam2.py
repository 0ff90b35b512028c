"""A SAM 2.1 model in the widget: a click on one slice, "Segment object in 3D" carries the object
through the stack with SAM 2's memory (``volume.tracker``), one id, one undo step, the same labels as
the engine called directly; Cancel midway writes whole slices only; "Extend labels in 3D" takes the
Labels layer's objects as mask seeds and keeps their ids. Random weights at 256 px (the mechanics,
not the quality)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _synthetic import ellipsoid_volume
from conftest import wait_encoded
from qtpy.QtCore import Qt

from napari_sam.engine.predictor import SamPredictor
from napari_sam.volume.propagate import Prompt, segment_volume
from napari_sam.volume.store import EmbeddingStore


@pytest.fixture
def sam2_small():
    from napari_sam.models.sam import build_model

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=256)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights, none left at zero (object pointers, memory embeddings)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def test_segment_object_in_3d_with_sam2_memory(sam_widget, qtbot, sam2_small):
    viewer, widget = sam_widget
    sam = widget.sam
    sam.set_model(sam2_small, device="cpu")
    img, _, info = ellipsoid_volume((6, 48, 64), n_objects=1, seed=3)
    viewer.add_image(img, name="stack")
    c = info[0]["center"]
    z, rc = int(round(c[0])), (c[1], c[2])
    viewer.dims.set_current_step(0, z)
    wait_encoded(qtbot, widget, (z,))
    sam.points_layer.add([z, *rc])
    qtbot.waitUntil(lambda: sam.objects is not None, timeout=30000)
    seed_mask = sam.objects[0].copy()
    with qtbot.waitSignal(widget.jobs.done, timeout=120000):
        qtbot.mouseClick(widget.volume_panel.segment_button, Qt.MouseButton.LeftButton)
    store = EmbeddingStore(SamPredictor(sam2_small, device="cpu"), img, axis=0)
    seeds = {1: {z: Prompt(points=np.array([[rc[1], rc[0]]]), labels=np.array([1]), mask=seed_mask)}}
    ref = segment_volume(store, seeds=seeds)
    labels = sam.labels_layer.data
    assert len(ref.slices) >= 2
    np.testing.assert_array_equal(labels, np.where(ref.to_labels() > 0, 1, 0))
    assert np.unique(labels).tolist() == [0, 1] and labels[z].any()
    sam.labels_layer.undo()
    assert not sam.labels_layer.data.any()


def _prompted(sam_widget, qtbot, model):
    """An (8, 48, 64) stack, SAM 2 set, one positive click on an ellipsoid; (img, z, rc, seed mask)."""
    viewer, widget = sam_widget
    widget.sam.set_model(model, device="cpu")
    img, _, info = ellipsoid_volume((8, 48, 64), n_objects=1, seed=3)
    viewer.add_image(img, name="stack")
    c = info[0]["center"]
    z, rc = int(round(c[0])), (c[1], c[2])
    viewer.dims.set_current_step(0, z)
    wait_encoded(qtbot, widget, (z,))
    widget.sam.points_layer.add([z, *rc])
    qtbot.waitUntil(lambda: widget.sam.objects is not None, timeout=30000)
    return img, z, rc, widget.sam.objects[0].copy()


def _direct(model, img, z, rc, mask, cancel_at=None):
    """The engine on the same stack and seed; ``cancel_at``: cancel once progress reaches it."""
    store = EmbeddingStore(SamPredictor(model, device="cpu"), img, axis=0)
    seeds = {1: {z: Prompt(points=np.array([[rc[1], rc[0]]]), labels=np.array([1]), mask=mask)}}
    stop = threading.Event()

    def progress(done, total):
        if cancel_at is not None and done >= cancel_at:
            stop.set()

    return segment_volume(store, seeds=seeds, progress=progress, cancel=stop)


def test_sam2_cancel_midway_keeps_whole_slices(sam_widget, qtbot, sam2_small):
    viewer, widget = sam_widget
    img, z, rc, seed_mask = _prompted(sam_widget, qtbot, sam2_small)
    sam, panel = widget.sam, widget.volume_panel
    reached, gate = threading.Event(), threading.Event()

    def hold(done, total):  # runs in the worker thread: park it after 3 slices
        if done >= 3:
            reached.set()
            gate.wait(60)

    widget.jobs.progressed.connect(hold, type=Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(widget.jobs.done, timeout=120000):
        qtbot.mouseClick(panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=60000)
        assert panel.cancel_button.isEnabled() and not panel.segment_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
        gate.set()
    assert sam.last_volume.cancelled and "cancelled" in panel.status_label.text()
    full = _direct(sam2_small, img, z, rc, seed_mask)
    part = _direct(sam2_small, img, z, rc, seed_mask, cancel_at=3)
    assert part.cancelled and not full.cancelled
    labels = sam.labels_layer.data
    written = [k for k in range(img.shape[0]) if labels[k].any()]
    assert set(written) <= {z, z + 1, z + 2} and z in written  # the first 3 slices tracked (forward)
    np.testing.assert_array_equal(labels, np.where(part.to_labels() > 0, 1, 0))
    for k in written:  # every written slice is that slice of the uncancelled run
        np.testing.assert_array_equal(labels[k] > 0, full.to_labels()[k] > 0)
    assert len(full.slices) > len(written)
    assert len(sam.points_layer.data) == 1  # prompts kept to run again
    assert panel.segment_button.isEnabled() and not panel.cancel_button.isEnabled()
    sam.labels_layer.undo()
    assert not sam.labels_layer.data.any()


def test_sam2_extend_labels_keeps_ids(sam_widget, qtbot, sam2_small):
    """Two objects of the Labels layer (id 9 on slices 1 and 4, id 5 on slice 2) seed SAM 2's tracking:
    ids kept, the labelled slices keep their masks, the rest as the engine gives it; one undo step."""
    viewer, widget = sam_widget
    widget.sam.set_model(sam2_small, device="cpu")
    img, _, _ = ellipsoid_volume((6, 48, 64), n_objects=2, seed=2)
    viewer.add_image(img, name="stack")
    lab = np.zeros(img.shape, np.int32)
    lab[1, 8:28, 8:28] = 9
    lab[4, 10:26, 10:26] = 9
    lab[2, 24:40, 36:56] = 5
    layer = viewer.add_labels(lab.copy(), name="mine")
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findText("mine"))
    wait_encoded(qtbot, widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=120000):
        qtbot.mouseClick(widget.volume_panel.extend_button, Qt.MouseButton.LeftButton)
    ref = segment_volume(EmbeddingStore(SamPredictor(sam2_small, device="cpu"), img, axis=0), labels=lab)
    assert not widget.sam.last_volume.cancelled and sorted(ref.ids) == [5, 9]
    assert set(np.unique(layer.data)) <= {0, 5, 9} and {5, 9} <= set(np.unique(layer.data))
    np.testing.assert_array_equal(layer.data[ref.slices], ref.to_labels()[ref.slices])
    for k, oid in ((1, 9), (4, 9), (2, 5)):  # the labelled slices keep their masks
        np.testing.assert_array_equal(layer.data[k] == oid, lab[k] == oid)
    assert len(ref.slices) > 3  # extended beyond the labelled slices
    layer.undo()
    np.testing.assert_array_equal(layer.data, lab)
