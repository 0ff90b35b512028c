"""``Preview`` driven through ``PromptLayers`` (as the user's clicks are): prompts -> masks shown."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.predictor import SamPredictor
from napari_sam.viewer.embeddings import SliceEmbeddings
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.preview import Preview
from napari_sam.viewer.prompts import PromptLayers


@pytest.fixture
def preview(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    vol = (rng.random((3, 48, 64)) * 200).astype(np.uint8)
    images = ImageSource(viewer)
    images.layer = viewer.add_image(vol)
    models = ModelSlot()
    models.set(tiny_sam, device="cpu")
    prompts = PromptLayers(viewer, images)
    shown: list[np.ndarray] = []
    pv = Preview(images, models, SliceEmbeddings(images, models), prompts, on_shown=shown.append)
    prompts.on_change = pv.update
    prompts.ensure_prompt_layers()
    viewer.dims.set_current_step(0, 1)
    return viewer, vol, prompts, pv, shown


def _direct(model, image, **kw):
    p = SamPredictor(model, device="cpu")
    p.set_image(image)
    return p.predict(**kw)


def test_a_click_shows_the_best_of_three_candidates(preview, tiny_sam):
    viewer, vol, prompts, pv, shown = preview
    prompts.add_point([1, 20, 30])
    masks, scores, _ = _direct(tiny_sam, vol[1], point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1.0]))
    best = int(np.argmax(scores))
    assert pv.index == (1,) and pv.candidate == best and len(pv.candidates) == 3
    np.testing.assert_array_equal(pv.objects[0], masks[best])
    np.testing.assert_array_equal(prompts.preview_layer.data > 0, masks[best])
    assert len(shown) == 1 and pv.has_objects == bool(masks[best].any())
    cand, score = pv.cycle()
    assert cand == (best + 1) % 3 and score == pytest.approx(float(scores[cand]))
    np.testing.assert_array_equal(prompts.preview_layer.data > 0, masks[cand])
    pv.clear()
    assert pv.objects is None and pv.index is None and not prompts.preview_layer.data.any()
    assert len(prompts.points_layer.data) == 1  # the prompts stay


def test_two_boxes_are_two_objects_of_one_batch(preview, tiny_sam):
    viewer, vol, prompts, pv, shown = preview
    pv.multimask = False
    for r0, c0, r1, c1 in [(4, 4, 20, 30), (24, 34, 44, 60)]:
        prompts.boxes_layer.add_rectangles(np.array([[1, r0, c0], [1, r0, c1], [1, r1, c1], [1, r1, c0]], float))
    prompts.boxes_layer.add_rectangles(np.array([[0, 4, 4], [0, 4, 9], [0, 9, 9], [0, 9, 4]], float))  # other slice
    boxes = np.array([[4, 4, 30, 20], [34, 24, 60, 44]], float)  # SAM x0, y0, x1, y1
    p = SamPredictor(tiny_sam, device="cpu")
    p.set_image(vol[1])
    masks, _, _ = p.predict_batch(None, None, boxes, multimask_output=False)
    assert pv.objects.shape == (2, 48, 64) and pv.candidates is None
    np.testing.assert_array_equal(pv.objects, masks[:, 0])
    expected = np.where(masks[1, 0], 2, np.where(masks[0, 0], 1, 0))
    np.testing.assert_array_equal(prompts.preview_layer.data, expected)


def test_update_without_prompts_or_image_changes_nothing(preview, make_napari_viewer, tiny_sam):
    viewer, vol, prompts, pv, shown = preview
    assert pv.update() is not None and not pv.update().size and shown == []  # no prompts: no objects
    models = ModelSlot()
    models.set(tiny_sam, device="cpu")
    bare = ImageSource(make_napari_viewer())
    empty = Preview(bare, models, SliceEmbeddings(bare, models), PromptLayers(bare.viewer, bare))
    assert empty.update() is None and empty.objects is None
