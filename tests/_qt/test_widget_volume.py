"""The "Volume" section: 3D propagation from prompts, one undo step, cancel keeps whole slices.

Random weights give arbitrary masks, so the widget's result is compared with the engine
(``segment_volume`` on an ``EmbeddingStore`` of the same stack) called directly with the same seed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _synthetic import ellipsoid_volume
from conftest import wait_encoded
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

from napari_sam.engine.predictor import SamPredictor
from napari_sam.viewer.volume import VOLUME_DEFAULTS
from napari_sam.volume.propagate import Prompt, segment_volume
from napari_sam.volume.store import EmbeddingStore

NO_STOP = {"iou_threshold": float("-inf"), "overlap_threshold": 0.0, "stability_threshold": 0.0, "max_distance": None}


def _prompted(sam_widget, qtbot):
    """A (8, 64, 64) stack with one positive point on an ellipsoid; stop thresholds at 0 (never)."""
    viewer, widget = sam_widget
    img, _, info = ellipsoid_volume((8, 64, 64), n_objects=2, seed=1)
    viewer.add_image(img, name="stack")
    c = info[0]["center"]
    z, rc = int(round(c[0])), (c[1], c[2])
    viewer.dims.set_current_step(0, z)
    wait_encoded(qtbot, widget, (z,))
    widget.sam.points_layer.add([z, *rc])
    qtbot.waitUntil(lambda: widget.sam.objects is not None, timeout=30000)
    panel = widget.volume_panel
    panel.iou_spin.setValue(0)
    panel.overlap_spin.setValue(0)
    panel.stability_spin.setValue(0)
    return viewer, widget, img, z, rc


def _direct(tiny_sam, img, z, rc, mask, cancel_at=None, **rules):
    """The engine on the same stack and seed; ``cancel_at``: cancel once progress reaches it."""
    store = EmbeddingStore(SamPredictor(tiny_sam, device="cpu"), img, axis=0)
    seeds = {1: {z: Prompt(points=np.array([[rc[1], rc[0]]]), labels=np.array([1]), mask=mask)}}  # (x, y)
    stop = threading.Event()

    def progress(done, total):
        if cancel_at is not None and done >= cancel_at:
            stop.set()

    return segment_volume(store, seeds=seeds, progress=progress, cancel=stop, min_area=4, **{**NO_STOP, **rules})


def test_segment_object_in_3d_one_id_one_undo(sam_widget, qtbot, tiny_sam):
    viewer, widget, img, z, rc = _prompted(sam_widget, qtbot)
    sam = widget.sam
    seed_mask = sam.objects[0].copy()
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(widget.volume_panel.segment_button, Qt.MouseButton.LeftButton)
    ref = _direct(tiny_sam, img, z, rc, seed_mask)
    labels = sam.labels_layer.data
    assert len(ref.slices) >= 3 and z in ref.slices
    np.testing.assert_array_equal(labels, np.where(ref.to_labels() > 0, 1, 0))
    np.testing.assert_array_equal(labels[z], seed_mask.astype(np.int32))  # the previewed mask is kept
    assert np.unique(labels).tolist() == [0, 1]
    assert len(sam.points_layer.data) == 0  # prompts used up, like a commit
    assert "object(s) [1]" in widget.volume_panel.status_label.text()
    sam.labels_layer.undo()
    assert not sam.labels_layer.data.any()


@pytest.mark.parametrize("depth", [0.0, 0.05])
def test_max_depth_control_reaches_the_engine(sam_widget, qtbot, tiny_sam, depth):
    """The panel's "max depth (x radius)" is segment_volume's ``max_extent`` (0 shows "off": None)."""
    viewer, widget, img, z, rc = _prompted(sam_widget, qtbot)
    sam, panel = widget.sam, widget.volume_panel
    assert panel.extent_spin.value() == pytest.approx(VOLUME_DEFAULTS["max_extent"])
    panel.extent_spin.setValue(depth)
    assert (panel.extent_spin.text() == "off") == (depth == 0)
    seed_mask = sam.objects[0].copy()
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(panel.segment_button, Qt.MouseButton.LeftButton)
    ref = _direct(tiny_sam, img, z, rc, seed_mask, max_extent=depth or None)
    np.testing.assert_array_equal(sam.labels_layer.data, np.where(ref.to_labels() > 0, 1, 0))
    reasons = list(ref.stopped[1].values())
    assert any(r.startswith("extent") for r in reasons) == (depth > 0), reasons


def test_cancel_midway_keeps_whole_slices(sam_widget, qtbot, tiny_sam):
    viewer, widget, img, z, rc = _prompted(sam_widget, qtbot)
    sam, panel = widget.sam, widget.volume_panel
    seed_mask = sam.objects[0].copy()
    reached, gate = threading.Event(), threading.Event()

    def hold(done, total):  # runs in the worker thread: park it after 2 slice steps
        if done >= 2:
            reached.set()
            gate.wait(30)

    widget.jobs.progressed.connect(hold, type=Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        assert panel.cancel_button.isEnabled() and not panel.segment_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
        gate.set()
    full = _direct(tiny_sam, img, z, rc, seed_mask)
    part = _direct(tiny_sam, img, z, rc, seed_mask, cancel_at=2)
    assert part.cancelled and sam.last_volume.cancelled
    assert 0 < len(part.slices) < len(full.slices)
    labels = sam.labels_layer.data
    np.testing.assert_array_equal(labels, np.where(part.to_labels() > 0, 1, 0))
    for k in part.slices:  # every written slice is the whole slice of the full run
        np.testing.assert_array_equal(labels[k] > 0, full.to_labels()[k] > 0)
    assert "cancelled" in panel.status_label.text()
    assert len(sam.points_layer.data) == 1  # prompts kept to run again
    assert panel.segment_button.isEnabled() and not panel.cancel_button.isEnabled()
    sam.labels_layer.undo()
    assert not sam.labels_layer.data.any()


def test_precompute_then_slider_needs_no_encode(sam_widget, qtbot):
    viewer, widget = sam_widget
    img, _, _ = ellipsoid_volume((6, 64, 64), n_objects=1, seed=2)
    viewer.add_image(img, name="stack")
    wait_encoded(qtbot, widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(widget.volume_panel.precompute_button, Qt.MouseButton.LeftButton)
    store = widget.sam.volume_store()
    assert all(store.is_cached(k) for k in range(6))
    assert "encoded" in widget.volume_panel.status_label.text()
    widget.encoder.prefetch_radius = 0
    computed = store.stats["computed"]
    viewer.dims.set_current_step(0, 5)
    assert widget.sam.has_embedding((5,)) and not widget.encoder.busy  # taken from the store, no worker
    assert store.stats["computed"] == computed


def test_slider_prefetches_neighbours(sam_widget, qtbot):
    viewer, widget = sam_widget
    img, _, _ = ellipsoid_volume((6, 64, 64), n_objects=1, seed=2)
    viewer.add_image(img, name="stack")
    viewer.dims.set_current_step(0, 4)
    qtbot.waitUntil(lambda: all(widget.sam.has_embedding((k,)) for k in (3, 4, 5)) and not widget.encoder.busy,
                    timeout=30000)
    assert widget.volume_box.isEnabled()


def test_extend_labels_button_keeps_ids(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img, _, _ = ellipsoid_volume((6, 64, 64), n_objects=1, seed=2)
    viewer.add_image(img, name="stack")
    lab = np.zeros(img.shape, np.int32)
    lab[1, 10:30, 10:30] = 9
    lab[4, 12:28, 12:28] = 9
    layer = viewer.add_labels(lab.copy(), name="mine")
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findText("mine"))
    wait_encoded(qtbot, widget)
    panel = widget.volume_panel
    panel.iou_spin.setValue(0)
    panel.overlap_spin.setValue(0)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(panel.extend_button, Qt.MouseButton.LeftButton)
    ref = segment_volume(EmbeddingStore(SamPredictor(tiny_sam, device="cpu"), img, axis=0), labels=lab,
                         min_area=4, **NO_STOP)
    assert set(np.unique(layer.data)) <= {0, 9}
    np.testing.assert_array_equal(layer.data[ref.slices] > 0, ref.to_labels()[ref.slices] > 0)
    np.testing.assert_array_equal(layer.data[[1, 4]], lab[[1, 4]])  # labelled slices keep their masks
    layer.undo()
    np.testing.assert_array_equal(layer.data, lab)


def test_one_min_iou_field_and_documented_3d_defaults(sam_widget):
    """The Volume panel's IoU stops a run ("stop below IoU", default segment_volume's), the Segment
    everything panel's keeps masks ("min IoU", the model's): two names for two different defaults,
    and docs/widget.md states the 3D ones the code uses."""
    _, widget = sam_widget
    texts = [lab.text() for lab in widget.findChildren(QLabel)]
    assert texts.count("min IoU") == 1 and texts.count("stop below IoU") == 1
    vol = widget.volume_panel
    assert vol.iou_spin.value() == pytest.approx(VOLUME_DEFAULTS["iou_threshold"])
    assert vol.overlap_spin.value() == pytest.approx(VOLUME_DEFAULTS["overlap_threshold"])
    assert vol.stability_spin.value() == pytest.approx(VOLUME_DEFAULTS["stability_threshold"])
    doc = (Path(__file__).parents[2] / "docs" / "widget.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| 3D stop criteria"))
    assert f"stop below IoU {VOLUME_DEFAULTS['iou_threshold']:g}," in row
    assert f"stop below overlap {VOLUME_DEFAULTS['overlap_threshold']:g}," in row
    assert f"stop below stability {VOLUME_DEFAULTS['stability_threshold']:g}," in row


def test_stop_controls_show_the_models_own_rules(sam_widget, tiny_sam):
    """A model with its own stop rules (registry: lite_medsam_nuclei) sets the Volume panel's controls when
    it loads; a model without them puts the defaults back."""
    from napari_sam.weights.registry import volume_overrides

    _, widget = sam_widget
    vol = widget.volume_panel
    own = volume_overrides("lite_medsam_nuclei")
    tiny_sam.model_name = "lite_medsam_nuclei"  # the name decides (the network stays the tiny one)
    widget.sam.set_model(tiny_sam, device="cpu")
    shown = vol.params()
    assert {k: shown[k] for k in own} == pytest.approx(own)
    tiny_sam.model_name = "nano_nuclei"
    widget.sam.set_model(tiny_sam, device="cpu")
    assert vol.extent_spin.value() == pytest.approx(VOLUME_DEFAULTS["max_extent"])
    assert vol.overlap_spin.value() == pytest.approx(VOLUME_DEFAULTS["overlap_threshold"])
    assert vol.stability_spin.value() == pytest.approx(VOLUME_DEFAULTS["stability_threshold"])
