"""Errors become notifications and leave every layer unchanged; removing layers or closing never raises."""

from __future__ import annotations

import numpy as np
from conftest import image2d, wait_encoded
from napari.layers import Points


def _snapshot(viewer):
    return [(la.name, type(la).__name__, np.asarray(la.data).copy() if not isinstance(la.data, list) else len(la.data))
            for la in viewer.layers]


def _same(a, b):
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[2], y[2])


def test_commit_without_image_or_prompts(sam_widget, notes):
    viewer, widget = sam_widget
    before = _snapshot(viewer)
    assert widget.commit() == []
    assert notes and "nothing to commit" in notes[-1][1]
    _same(before, _snapshot(viewer))


def test_2d_points_on_3d_image(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    sam = widget.sam
    viewer.add_image(np.stack([image2d(seed=s) for s in range(3)]), name="stack")
    wait_encoded(qtbot, widget)
    user_pts = Points(np.array([[40.0, 50.0]]), name="my 2D points")
    viewer.add_layer(user_pts)
    sam.points_layer = user_pts
    before = _snapshot(viewer)
    assert sam.update_preview() is None
    assert any("2D but the image" in text for kind, text in notes if kind == "show_error")
    _same(before, _snapshot(viewer))


def test_bad_checkpoint_and_no_network(sam_widget, qtbot, notes, tmp_path, monkeypatch):
    viewer, widget = sam_widget
    viewer.add_image(image2d(), name="blobs")
    wait_encoded(qtbot, widget)
    before, model = _snapshot(viewer), widget.sam.model
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.model_box.load(str(bad))
    qtbot.waitUntil(lambda: widget.model_box.worker is None, timeout=20000)
    assert any("broken.pth" in text for kind, text in notes if kind == "show_error")
    assert widget.sam.model is model

    from napari_sam.errors import ModelDownloadError
    from napari_sam.weights import download

    def offline(name, progress=None):
        raise ModelDownloadError(f"cannot download {name}: no network")

    monkeypatch.setattr(download, "fetch", offline)
    widget.model_box.load("vit_b")
    qtbot.waitUntil(lambda: widget.model_box.worker is None, timeout=20000)
    assert any("no network" in text for kind, text in notes if kind == "show_error")
    assert widget.sam.model is model and widget.model_box.model_combo.currentText() == "tiny_test"
    _same(before, _snapshot(viewer))


def test_default_model_fallback_message(make_napari_viewer, notes):
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    widget = SamWidget(viewer)  # empty model cache (autouse fixture); default weights not packaged yet
    if widget.model_box.worker is not None:  # the project's model file exists: it loads
        return
    assert "not available" in widget.model_box.message.text()
    assert widget.sam.model is None


def test_remove_and_rename_layers_in_use(sam_widget, qtbot, notes):
    viewer, widget = sam_widget
    sam = widget.sam
    img = viewer.add_image(image2d(), name="blobs")
    wait_encoded(qtbot, widget)
    sam.add_point([40, 60])
    widget.commit()
    img.name = "renamed"
    assert widget.image_combo.currentText() == "renamed"
    sam.labels_layer.name = "my labels"
    assert widget.labels_combo.currentText() == "my labels"
    viewer.layers.remove(sam.points_layer)
    viewer.layers.remove(sam.preview_layer)
    viewer.layers.remove(sam.labels_layer)
    assert widget.commit() == []
    viewer.layers.remove(img)
    assert sam.image_layer is None and widget.image_combo.current_layer() is None
    viewer.layers.clear()
    img2 = viewer.add_image(image2d(seed=3), name="again")
    assert sam.image_layer is img2 and sam.points_layer in viewer.layers
    wait_encoded(qtbot, widget)


def test_close_viewer_mid_encode(make_napari_viewer, qtbot, tiny_sam):
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget)
    widget.sam.set_model(tiny_sam, device="cpu")
    big = np.random.default_rng(0).integers(0, 255, (2, 3000, 3000), dtype=np.uint8)
    viewer.add_image(big, name="stack")
    worker = widget.encoder.worker
    assert worker is not None
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30000)
    qtbot.wait(50)  # let the queued returned/finished signals run
