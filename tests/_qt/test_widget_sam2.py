"""A SAM 2.1 model in the widget: a click on one slice, "Segment object in 3D" carries the object
through the stack with SAM 2's memory (``volume.tracker``), one id, one undo step, the same labels as
the engine called directly. Random weights at 256 px (the mechanics, not the quality)."""

from __future__ import annotations

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
