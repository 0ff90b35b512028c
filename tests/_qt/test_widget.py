"""The dock widget, used like a user would: layers in, prompts through layers and the canvas, labels out.

Random weights give arbitrary masks, so the checks are on what the widget guarantees: ids, undo,
no-overwrite, slice placement, and the napari -> SAM coordinate mapping (the preview must equal
``SamPredictor.predict`` on the same prompts converted by hand: x = col, y = row).
"""

from __future__ import annotations

import numpy as np
from conftest import direct, image2d, refined, wait_encoded
from qtpy.QtCore import QPoint, Qt

from napari_sam.engine.predictor import SamPredictor


def test_widget_shows_model_device_layers(sam_widget, qtbot):
    viewer, widget = sam_widget
    items = [widget.model_box.model_combo.itemText(i) for i in range(widget.model_box.model_combo.count())]
    assert items[0] == "tiny_test" and items[-1] == "Load checkpoint file..."
    assert any("not downloaded" in t for t in items)  # registry names with their download state
    assert widget.model_box.device_combo.itemText(0) == "auto"
    layer = viewer.add_image(image2d(), name="blobs")
    assert widget.image_combo.current_layer() is layer
    names = [la.name for la in viewer.layers]
    assert {"SAM points", "SAM boxes"} <= set(names)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.sam.points_layer, timeout=5000)
    wait_encoded(qtbot, widget)
    assert "embedding" in widget.status_label.text()


def test_long_layer_names_do_not_widen_the_dock(make_napari_viewer, qtbot, tiny_sam):
    """A 64-character layer name (an id) elides in the layer lists instead of widening the dock and
    squeezing the canvas; the popup and the API keep the whole name."""
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer(show=True)
    name = "3f2a9c" * 10 + "abcd"
    data = image2d()
    layer = viewer.add_image(data.copy(), name=name)
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    widget.sam.set_model(tiny_sam, device="cpu")
    wait_encoded(qtbot, widget)
    assert widget.image_combo.current_layer() is layer and widget.image_combo.currentText() == name
    assert widget.image_combo.sizeHint().width() < 300
    assert widget.sizeHint().width() < 600
    np.testing.assert_array_equal(layer.data, data)
    qtbot.waitUntil(lambda: not widget.encoder.busy, timeout=30000)


def test_point_preview_commit_and_clear(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img, name="blobs")
    wait_encoded(qtbot, widget)
    sam = widget.sam
    sam.points_layer.add([40, 60])  # napari (row, col)
    best, masks, scores = direct(tiny_sam, img, [[60, 40]])  # SAM (x, y)
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    assert "IoU" in widget.score_label.text()
    assert widget.commit() == [1]
    np.testing.assert_array_equal(sam.labels_layer.data, best.astype(np.int32))
    assert len(sam.points_layer.data) == 0 and not sam.preview_layer.data.any()
    assert widget.labels_combo.current_layer() is sam.labels_layer


def test_canvas_clicks_positive_negative_and_keys(make_napari_viewer, qtbot, tiny_sam):
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer(show=True)
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget)
    widget.sam.set_model(tiny_sam, device="cpu")
    img = image2d((128, 128))
    viewer.add_image(img, name="blobs")
    wait_encoded(qtbot, widget)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.sam.points_layer, timeout=5000)
    canvas = viewer.window._qt_viewer.canvas.native
    sam = widget.sam
    viewer.camera.center = (0, 40.0, 50.0)
    qtbot.wait(50)
    center = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=center)
    qtbot.waitUntil(lambda: len(sam.points_layer.data) == 1, timeout=5000)
    np.testing.assert_allclose(sam.points_layer.data[0], [40, 50], atol=1.0)
    # the first click: SAM's three candidates; N cycles them (keys on the active points layer)
    first = sam.candidate
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert sam.candidate == (first + 1) % 3
    assert f"mask {sam.candidate + 1}/3" in widget.score_label.text()
    shown = sam.candidate
    viewer.camera.center = (0, 80.0, 90.0)
    qtbot.wait(50)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, pos=center)
    qtbot.waitUntil(lambda: len(sam.points_layer.data) == 2, timeout=5000)
    assert list(sam.points_layer.features["label"].astype(str)) == ["positive", "negative"]
    colors = sam.points_layer.face_color
    assert colors[0][1] > colors[0][0] and colors[1][0] > colors[1][1]  # green, red
    rc = sam.points_layer.data[:, -2:]
    # the second click refines the shown candidate (its logits as mask_input, one mask)
    masks, _, expected = refined(tiny_sam, img, rc[:, ::-1], [1, 0], candidate=shown)
    np.testing.assert_array_equal(sam.preview_layer.data > 0, expected)
    assert sam.candidates.shape[0] == 1
    # C commits
    qtbot.keyClick(canvas, Qt.Key.Key_C)
    np.testing.assert_array_equal(sam.labels_layer.data, expected.astype(np.int32))
    assert len(sam.points_layer.data) == 0
    # a click after a negative one is positive again
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=center)
    qtbot.waitUntil(lambda: len(sam.points_layer.data) == 1, timeout=5000)
    assert str(sam.points_layer.features["label"].iloc[0]) == "positive"


def test_negative_point_through_api(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img)
    wait_encoded(qtbot, widget)
    sam = widget.sam
    sam.add_point([40, 60])
    only_pos = sam.preview_layer.data > 0
    sam.add_point([70, 100], positive=False)
    _, _, expected = refined(tiny_sam, img, [[60, 40], [100, 70]], [1, 0])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, expected)
    assert not np.array_equal(only_pos, expected)
    # removing the last point is no refinement: the first click's candidates again
    sam.points_layer.selected_data = {1}
    sam.points_layer.remove_selected()
    np.testing.assert_array_equal(sam.preview_layer.data > 0, only_pos)
    assert sam.candidates.shape[0] == 3
    # prompts that are not an extension (a moved point) decode afresh
    sam.points_layer.data = np.array([[42.0, 61.0]])
    best, *_ = direct(tiny_sam, img, [[61, 42]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    # the console API stays stateless: segment() never refines
    sam.clear_prompts()
    a = sam.segment(points=[[40, 60], [70, 100]], labels=[1, 0], multimask=True)
    best2, *_ = direct(tiny_sam, img, [[60, 40], [100, 70]], labels=[1, 0])
    np.testing.assert_array_equal(a, best2)


def test_boxes_objects_ids_no_overwrite_undo(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    viewer.add_image(img)
    wait_encoded(qtbot, widget)
    sam = widget.sam
    # a box alone segments (napari rectangle corners (row, col) -> SAM (x0, y0, x1, y1))
    sam.boxes_layer.add_rectangles(np.array([[10, 20], [60, 90]]))
    best, *_ = direct(tiny_sam, img, box_xy=[20, 10, 90, 60])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    # a point inside the box refines the box's mask (its logits as mask_input, one mask)
    sam.add_point([30, 50])
    p = SamPredictor(tiny_sam, device="cpu")
    p.set_image(img)
    box = np.array([20, 10, 90, 60], np.float32)
    m3, s3, low = p.predict(box=box, multimask_output=True)
    m1, _, _ = p.predict(np.array([[50, 30]], np.float32), np.ones(1, np.float32), box,
                         mask_input=low[int(np.argmax(s3))][None], multimask_output=False)
    np.testing.assert_array_equal(sam.preview_layer.data > 0, m1[0])
    sam.points_layer.data = np.empty((0, 2))
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    assert widget.commit() == [1]
    obj1 = sam.labels_layer.data.copy()
    # two boxes -> two objects, one predict_batch call, each a new id; object 1 is kept
    sam.boxes_layer.add_rectangles(np.array([[[5, 5], [50, 70]], [[60, 80], [110, 150]]]))
    p = SamPredictor(tiny_sam, device="cpu")
    p.set_image(img)
    mb, _, _ = p.predict_batch(None, None, np.array([[5, 5, 70, 50], [80, 60, 150, 110]], np.float32))
    np.testing.assert_array_equal(sam.objects, mb[:, 0])
    assert widget.commit() == [2, 3]
    data = sam.labels_layer.data
    np.testing.assert_array_equal(data[obj1 == 1], 1)  # no overwrite
    np.testing.assert_array_equal(data == 2, mb[0, 0] & (obj1 == 0))
    np.testing.assert_array_equal(data == 3, mb[1, 0] & (obj1 == 0) & ~mb[0, 0])
    # undo removes the last object only
    sam.labels_layer.undo()
    assert not (sam.labels_layer.data == 3).any() and (sam.labels_layer.data == 2).any()
    # overwrite ticked: the next object takes pixels of existing ones
    widget.overwrite_check.setChecked(True)
    sam.boxes_layer.add_rectangles(np.array([[10, 20], [60, 90]]))
    assert widget.commit() == [3]
    np.testing.assert_array_equal(sam.labels_layer.data == 3, best)


def test_scale_translate_mapping(sam_widget, qtbot, tiny_sam):
    viewer, widget = sam_widget
    img = image2d()
    layer = viewer.add_image(img, scale=(2.0, 0.5), translate=(10.0, -5.0))
    wait_encoded(qtbot, widget)
    sam = widget.sam
    pts = sam.points_layer
    pts.translate = (4.0, 3.0)  # the prompt layer's own transform differs from the image's
    world = np.array([90.0, 25.0])
    pts.add(pts.world_to_data(world))
    r, c = layer.world_to_data(world)
    assert (r, c) == (40.0, 60.0)
    best, *_ = direct(tiny_sam, img, [[c, r]])
    np.testing.assert_array_equal(sam.preview_layer.data > 0, best)
    widget.commit()
    np.testing.assert_array_equal(sam.labels_layer.scale, layer.scale)
    np.testing.assert_array_equal(sam.labels_layer.translate, layer.translate)
    np.testing.assert_array_equal(sam.labels_layer.data, best.astype(np.int32))
