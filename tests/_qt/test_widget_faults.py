"""Faults met through the widget, driven as a user would (issue 23): a Labels layer at the top of its
dtype, a multiscale image, the image or the Labels layer removed during "Segment everything", a
switch from a 2D to a 3D image; the viewer closed while encoding (from a script) or during a job, the
model changed mid-encode or mid-job, a second job started while one runs. Each ends with a
notification or a clean cancel, no traceback, and the Labels data as expected."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
from _synthetic import ellipsoid_volume, make_tiny_sam
from conftest import direct, image2d, wait_encoded
from qtpy.QtCore import Qt

from napari_sam._qt._threads import wait_for_workers


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


# ---------------------------------------------------------------- closing, model changes, two jobs (issue 23)
CLOSE_SCRIPT = """
import numpy as np, napari
from napari_sam._qt.widget import SamWidget
viewer = napari.Viewer(show=False)
widget = SamWidget(viewer, load_default=False)
viewer.window.add_dock_widget(widget)
widget.sam.set_model("nano_nuclei", device="cpu")
viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 2000, 2000), dtype=np.uint8), name="stack")
assert widget.encoder.busy
viewer.close()
print("closed while encoding")
"""


def test_script_closes_viewer_while_encoding(tmp_path):
    """The process used to abort ("wrapped C/C++ object of type WorkerBaseSignals has been deleted")
    when a script closed the viewer (and ended) while a slice was still being encoded."""
    script = tmp_path / "close_mid_encode.py"
    script.write_text(CLOSE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "closed while encoding" in out.stdout
    assert "Traceback" not in out.stderr and "has been deleted" not in out.stderr


def _hold_jobs(widget, after=1):
    """Park the running job's worker thread at its ``after``-th progress report until ``gate`` is set."""
    reached, gate = threading.Event(), threading.Event()

    def hold(done, total):  # worker thread (direct connection)
        if done >= after and not gate.is_set():
            reached.set()
            gate.wait(30)

    widget.jobs.progressed.connect(hold, type=Qt.ConnectionType.DirectConnection)
    return reached, gate


def _prompted_stack(viewer, widget, qtbot):
    img, _, info = ellipsoid_volume((8, 48, 48), n_objects=2, seed=1)
    viewer.add_image(img, name="stack")
    c = info[0]["center"]
    z = int(round(c[0]))
    viewer.dims.set_current_step(0, z)
    wait_encoded(qtbot, widget, (z,))
    widget.sam.points_layer.add([z, c[1], c[2]])
    qtbot.waitUntil(lambda: widget.sam.objects is not None, timeout=30000)
    for box in (widget.volume_panel.iou_spin, widget.volume_panel.overlap_spin, widget.volume_panel.stability_spin):
        box.setValue(0)
    return img


def _close_mid_job(viewer, widget, qtbot, button, notes):
    labels = widget.sam.labels_layer
    before = labels.data.copy()
    reached, gate = _hold_jobs(widget)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(reached.is_set, timeout=30000)
    viewer.close()  # deletes the widget's Qt objects: the job's result has nowhere to go
    assert widget.jobs.closed and widget.jobs.cancel_event.is_set()
    gate.set()
    assert wait_for_workers(30000)  # the job stops at its next cancel check
    qtbot.wait(50)  # queued results, if any, run now
    np.testing.assert_array_equal(labels.data, before)
    assert not labels._undo_history
    assert not [t for k, t in notes if k == "show_error"], notes
    from napari.utils import progress as napari_progress

    assert not [b for b in napari_progress._all_instances if str(b.desc).startswith("SAM")]  # its bar went too


def test_viewer_closed_during_3d_propagation(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    _prompted_stack(viewer, widget, qtbot)
    _close_mid_job(viewer, widget, qtbot, widget.volume_panel.segment_button, notes)


def test_viewer_closed_during_segment_everything(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    viewer.add_image(np.stack([image2d(seed=s) for s in range(3)]), name="stack")
    wait_encoded(qtbot, widget)
    panel = widget.everything_panel
    panel.points_spin.setValue(4)
    panel.stack_check.setChecked(True)
    _close_mid_job(viewer, widget, qtbot, panel.run_button, notes)
    assert not [t for _, t in notes if "wrote nothing" in t]  # a clean cancel: the result is dropped


def test_prompt_layers_removed_and_image_renamed_during_3d_propagation(sam_widget, qtbot, notes):
    """The seeds are read when the job starts: removing the points layer, renaming the image and the
    Labels layer mid-job does not stop it; the object is written whole, no traceback."""
    viewer, widget = sam_widget
    _prompted_stack(viewer, widget, qtbot)
    sam = widget.sam
    labels = sam.labels_layer
    reached, gate = _hold_jobs(widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(widget.volume_panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        viewer.layers.remove(sam.points_layer)
        viewer.layers.remove(sam.boxes_layer)
        viewer.layers["stack"].name = "renamed stack"
        labels.name = "my labels"
        gate.set()
    assert sig.args[1] == [1]
    assert sam.labels_layer is labels and np.unique(labels.data).tolist() == [0, 1]
    written = [z for z in range(labels.data.shape[0]) if labels.data[z].any()]
    assert written == list(range(written[0], written[-1] + 1))  # one run of whole slices
    assert not [t for k, t in notes if k == "show_error"], notes
    sam.ensure_prompt_layers()  # the prompt layers come back for the next object
    assert sam.points_layer in viewer.layers and len(sam.points_layer.data) == 0


def test_image_replaced_during_3d_propagation_writes_nothing(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    img = _prompted_stack(viewer, widget, qtbot)
    labels = widget.sam.labels_layer
    before = labels.data.copy()
    reached, gate = _hold_jobs(widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(widget.volume_panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        viewer.layers.remove("stack")
        viewer.add_image(img[:, ::-1], name="stack")  # another image under the same name
        gate.set()
    assert sig.args[1] is None
    np.testing.assert_array_equal(labels.data, before)
    assert not labels._undo_history
    msg = [t for k, t in notes if "image layer 'stack' was removed or replaced" in t]
    assert msg and "nothing was written" in msg[0]
    assert not [t for k, t in notes if k == "show_error"], notes


def test_model_changed_mid_encode(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    sam = widget.sam
    old = sam.predictor
    started, gate = threading.Event(), threading.Event()
    encode = old.compute_embedding

    def slow(image):  # worker thread: the old model's encode is still running when the model changes
        started.set()
        gate.wait(30)
        return encode(image)

    old.compute_embedding = slow
    img = image2d()
    viewer.add_image(img, name="blobs")
    qtbot.waitUntil(started.is_set, timeout=30000)
    other = make_tiny_sam(seed=7)
    sam.set_model(other, device="cpu")
    gate.set()
    wait_encoded(qtbot, widget)
    assert len(sam.cache) == 1  # the new model's embedding; the old model's result was dropped
    sam.points_layer.add([40, 60])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, direct(other, img, [[60, 40]])[0])
    assert not [t for k, t in notes if k == "show_error"]


def test_device_changed_mid_encode(sam_widget, qtbot, tiny_sam, notes):
    """The user picks another device while a slice is encoded: the model's weights move under the
    running encode (on a GPU machine it then fails: "Expected all tensors to be on the same device",
    simulated here, CPU only). The failure is not shown, the slice is re-encoded on the new device,
    and the Labels layer is untouched."""
    viewer, widget = sam_widget
    sam, box = widget.sam, widget.model_box
    assert box.device_combo.currentText() == "auto" and box.device_combo.findText("cpu") >= 0
    old, version = sam.predictor, sam.model_slot.version
    started, gate = threading.Event(), threading.Event()
    encode = old.compute_embedding

    def moved_under_it(image):  # worker thread
        started.set()
        gate.wait(30)
        if sam.model_slot.version != version:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")
        return encode(image)

    old.compute_embedding = moved_under_it
    img = image2d()
    viewer.add_image(img, name="blobs")
    labels = sam.labels_layer
    before = labels.data.copy()
    qtbot.waitUntil(started.is_set, timeout=30000)
    box.device_combo.setCurrentText("cpu")  # as the user does
    assert sam.model_slot.version == version + 1 and sam.predictor is not old and sam.device == "cpu"
    gate.set()
    wait_encoded(qtbot, widget)
    assert len(sam.cache) == 1  # the new predictor's embedding only
    assert not [t for k, t in notes if k == "show_error"], notes
    sam.points_layer.add([40, 60])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, direct(tiny_sam, img, [[60, 40]])[0])
    np.testing.assert_array_equal(labels.data, before)
    assert not labels._undo_history
    assert "on cpu" in box.message.text()


def test_model_changed_during_a_job_cancels_it(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    viewer.add_image(np.stack([image2d(seed=s) for s in range(3)]), name="stack")
    wait_encoded(qtbot, widget)
    labels = widget.sam.labels_layer
    before = labels.data.copy()
    panel = widget.everything_panel
    panel.points_spin.setValue(4)
    panel.stack_check.setChecked(True)
    reached, gate = _hold_jobs(widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        widget.sam.set_model(tiny_sam, device="cpu")
        gate.set()
    assert sig.args[1] in (None, [])
    np.testing.assert_array_equal(labels.data, before)
    assert [t for k, t in notes if "model changed while 'segment everything' ran" in t]
    assert not [t for k, t in notes if k == "show_error"]


def test_device_changed_during_a_3d_job(sam_widget, qtbot, tiny_sam, notes):
    """Another device picked during a 3D run: the job is cancelled with a warning; the decode that then
    fails because the weights moved (a GPU machine; simulated here) is not shown as an error, and the
    Labels layer is untouched."""
    viewer, widget = sam_widget
    _prompted_stack(viewer, widget, qtbot)
    sam = widget.sam
    labels = sam.labels_layer
    before = labels.data.copy()
    bg, version = sam.background_predictor(), sam.model_slot.version
    decode = bg.predict_torch

    reached, gate, calls = threading.Event(), threading.Event(), []

    def moved_under_it(*args, **kwargs):  # worker thread: the second decode is running when the device changes
        calls.append(1)
        if len(calls) == 2:
            reached.set()
            gate.wait(30)
        if sam.model_slot.version != version:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")
        return decode(*args, **kwargs)

    bg.predict_torch = moved_under_it
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(widget.volume_panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        widget.model_box.device_combo.setCurrentText("cpu")
        gate.set()
    assert sig.args[1] is None  # failed after the cancel: nothing to write
    np.testing.assert_array_equal(labels.data, before)
    assert not labels._undo_history
    assert [t for k, t in notes if "model changed while '3D propagation' ran" in t]
    assert not [t for k, t in notes if k == "show_error"], notes
    assert widget.volume_panel.segment_button.isEnabled()


def test_second_job_while_one_runs(sam_widget, qtbot, tiny_sam, notes):
    viewer, widget = sam_widget
    _prompted_stack(viewer, widget, qtbot)
    vol, every = widget.volume_panel, widget.everything_panel
    reached, gate = _hold_jobs(widget)
    with qtbot.waitSignal(widget.jobs.done, timeout=60000) as sig:
        qtbot.mouseClick(vol.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(reached.is_set, timeout=30000)
        assert not every.run_button.isEnabled() and not vol.extend_button.isEnabled()
        qtbot.mouseClick(every.run_button, Qt.MouseButton.LeftButton)  # disabled: nothing happens
        assert every.run() is False and vol.precompute() is False  # from a script: refused with a warning
        assert [t for k, t in notes if k == "show_warning" and "wait for '3D propagation' to finish" in t]
        gate.set()
    assert sig.args[0] == "3D propagation" and sig.args[1] == [1]
    assert np.unique(widget.sam.labels_layer.data).tolist() == [0, 1]  # the 3D object only
    assert every.run_button.isEnabled() and not every.status_label.text()
    assert not [t for k, t in notes if k == "show_error"]


def test_tiles_on_a_huge_image_are_refused_with_the_count(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    viewer.add_image(np.zeros((6000, 6000), np.uint8), name="huge")
    wait_encoded(qtbot, widget)  # untiled: shrunk to the model's input, one run
    widget.tiled_check.click()  # the user ticks "large images: tiles at full resolution"
    assert widget.sam.tiled
    n = widget.sam.predictor.encodings((6000, 6000))
    qtbot.waitUntil(lambda: not widget.encoder.busy and any("encoder runs" in t for _, t in notes), timeout=60000)
    (msg,) = [t for k, t in notes if k == "show_error"]
    assert f"needs {n} encoder runs" in msg and "Switch tiles off" in msg and "encoding failed" not in msg
    assert not widget.sam.has_embedding() and widget.sam.existing_labels_layer is None


def test_widget_job_during_a_console_call_is_refused(sam_widget, qtbot, notes, monkeypatch):
    """A console call runs on the GUI thread with the window live (napari's progress bar): the widget's
    "Segment everything" clicked meanwhile is refused with a message and the console call completes."""
    from napari.utils import progress as napari_progress

    import napari_sam.viewer.console_progress as cp

    viewer, widget = sam_widget
    _prompted_stack(viewer, widget, qtbot)
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)  # the bar sees every report
    clicked: list[str] = []

    def click_during(event):
        for bar in event.added:
            desc = bar.desc

            def on_value(e, desc=desc):
                if e.value >= 2 and not clicked:
                    clicked.append(desc)
                    qtbot.mouseClick(widget.everything_panel.run_button, Qt.MouseButton.LeftButton)
                    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30000)  # its worker ran and ended

            bar.events.value.connect(on_value)

    napari_progress._all_instances.events.changed.connect(click_during)
    try:
        ids = widget.sam.segment_volume(iou_threshold=0, overlap_threshold=0, stability_threshold=0)
    finally:
        napari_progress._all_instances.events.changed.disconnect(click_during)
    assert clicked == ["SAM: 3D segmentation"] and ids == [1]
    assert np.unique(widget.sam.labels_layer.data).tolist() == [0, 1]  # the 3D object only
    busy = [t for k, t in notes if k == "show_warning" and "SAM is busy with '3D segmentation'" in t]
    assert busy and "nothing was written" in busy[0]
    assert not [t for k, t in notes if k == "show_error"], notes
    assert widget.everything_panel.run_button.isEnabled()
