"""Faults met through the widget, driven as a user would (issue 23): a Labels layer at the top of its
dtype, a multiscale image, the image or the Labels layer removed during "Segment everything", a
switch from a 2D to a 3D image. Each ends with a notification and the Labels data as expected."""

from __future__ import annotations

import numpy as np
from conftest import direct, image2d, wait_encoded
from qtpy.QtCore import Qt


def _everything(widget, qtbot, on_progress=None):
    panel = widget.everything_panel
    panel.points_spin.setValue(4)
    panel.iou_spin.setValue(0)
    panel.stability_spin.setValue(0)
    if on_progress is not None:
        done = []

        def once(d, t):
            if not done:
                done.append(1)
                on_progress()

        widget.jobs.progressed.connect(once)  # queued: runs on the GUI thread, before the result
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    return sig.args[1]


def test_commit_into_full_uint8_labels_promotes(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img, name="blobs")
    mine = np.zeros(img.shape, np.uint8)
    mine[:10, :10], mine[110:, 150:] = 255, 4
    labels = viewer.add_labels(mine.copy(), name="mine")
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findText("mine"))
    wait_encoded(qtbot, widget)
    widget.sam.points_layer.add([40, 60])
    best = direct(tiny_sam, img, [[60, 40]])[0]
    qtbot.mouseClick(widget.commit_button, Qt.MouseButton.LeftButton)
    expected = mine.astype(np.int32)
    expected[best & (mine == 0)] = 256
    assert labels.data.dtype == np.int32
    np.testing.assert_array_equal(labels.data, expected)
    assert "[256]" in widget.status_label.text()
    assert any(k == "show_warning" and "converted to int32" in t for k, t in notes)
    labels.undo()
    np.testing.assert_array_equal(labels.data, mine)


def test_multiscale_image_is_segmented_on_level_0(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image([img, img[::2, ::2]], multiscale=True, name="pyramid")
    assert widget.sam.image_layer.name == "pyramid"
    wait_encoded(qtbot, widget)
    widget.sam.points_layer.add([40, 60])
    best = direct(tiny_sam, img, [[60, 40]])[0]
    np.testing.assert_array_equal(widget.sam.preview_layer.data > 0, best)
    assert widget.commit() == [1]
    np.testing.assert_array_equal(widget.sam.labels_layer.data, best.astype(np.int32))
    assert not [t for k, t in notes if k == "show_error"]


def test_image_removed_during_segment_everything(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    viewer.add_image(image2d(), name="blobs")
    wait_encoded(qtbot, widget)
    labels = widget.sam.labels_layer
    assert _everything(widget, qtbot, lambda: viewer.layers.remove("blobs")) is None
    assert not labels.data.any() and not labels._undo_history
    msg = [t for k, t in notes if "image layer 'blobs' was removed" in t]
    assert msg and "nothing was written" in msg[0]
    assert "was removed" in widget.everything_panel.status_label.text()
    assert not any("no mask passed" in t for _, t in notes)


def test_labels_removed_during_segment_everything(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    viewer.add_image(image2d(), name="blobs")
    wait_encoded(qtbot, widget)
    labels = widget.sam.labels_layer
    assert _everything(widget, qtbot, lambda: viewer.layers.remove(labels)) is None
    assert not labels.data.any()
    assert [t for k, t in notes if "labels layer 'SAM labels' was removed" in t]
    assert not [ly for ly in viewer.layers if ly.name.startswith("SAM labels")]  # no new layer, no silent write
    assert widget.sam.existing_labels_layer is None
    ids = _everything(widget, qtbot)  # run again: a new layer, as the message says
    assert ids and widget.sam.labels_layer.data.max() == max(ids)


def test_switch_from_2d_to_3d_image_gets_a_fitting_labels_layer(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img, name="2d")
    wait_encoded(qtbot, widget)
    widget.sam.points_layer.add([40, 60])
    assert widget.commit() == [1]
    old = widget.sam.labels_layer
    before = old.data.copy()
    vol = np.stack([img, img[::-1], img[:, ::-1]])
    viewer.add_image(vol, name="3d")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("3d"))
    assert widget.sam.image_layer.name == "3d"
    assert any("does not fit the image '3d'" in t for _, t in notes)
    assert widget.labels_combo.current_layer() is None
    viewer.dims.set_current_step(0, 1)
    wait_encoded(qtbot, widget)
    widget.sam.points_layer.add([1, 40, 60])
    assert widget.commit() == [1]
    new = widget.sam.labels_layer
    assert new is not old and new.data.shape == vol.shape
    assert new.data[1].any() and not new.data[[0, 2]].any()
    np.testing.assert_array_equal(old.data, before)
