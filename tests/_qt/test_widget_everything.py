"""The "Segment everything" section: automatic labels with offset ids, one undo step, existing kept."""

from __future__ import annotations

import numpy as np
from conftest import image2d, wait_encoded
from qtpy.QtCore import Qt

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor


def test_segment_everything_button(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img, name="blobs")
    existing = np.zeros(img.shape, np.int32)
    existing[10:60, 20:90] = 7
    labels = viewer.add_labels(existing.copy(), name="mine")
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findText("mine"))  # as the user picks it
    assert widget.sam.labels_layer is labels
    wait_encoded(qtbot, widget)
    panel = widget.everything_panel
    assert not widget.volume_box.isEnabled()  # 2D image: no stack
    panel.points_spin.setValue(6)
    panel.iou_spin.setValue(0)
    panel.stability_spin.setValue(0)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000):
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    gen = AutomaticMaskGenerator(SamPredictor(tiny_sam, device="cpu"), points_per_side=6,
                                 pred_iou_thresh=0, stability_score_thresh=0)
    ref = gen.generate_labels(to_sam_image(img))
    assert ref.max() >= 1
    expected = np.where(existing > 0, existing, np.where(ref > 0, ref + 7, 0))  # ids above 7, 7 kept
    np.testing.assert_array_equal(labels.data, expected)
    assert "object(s) written" in panel.status_label.text()
    labels.undo()
    np.testing.assert_array_equal(labels.data, existing)


def test_segment_everything_cancel_writes_nothing(sam_widget, qtbot):
    viewer, widget = sam_widget
    viewer.add_image(image2d(), name="blobs")
    wait_encoded(qtbot, widget)
    panel = widget.everything_panel
    widget.jobs.progressed.connect(lambda d, t: widget.jobs.cancel(), type=Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert sig.args[1] == []
    assert not widget.sam.labels_layer.data.any()
    assert "nothing written" in panel.status_label.text()


def test_thresholds_follow_the_model(sam_widget):
    """The built-in nano_nuclei model scores lower than SAM: its own thresholds are preset (registry)."""
    viewer, widget = sam_widget
    panel = widget.everything_panel
    assert (panel.iou_spin.value(), panel.stability_spin.value()) == (0.88, 0.95)  # a custom model: SAM's
    widget.sam.set_model("nano_nuclei", device="cpu")
    assert (panel.iou_spin.value(), panel.stability_spin.value()) == (0.5, 0.9)
    assert panel.params()["pred_iou_thresh"] == 0.5

