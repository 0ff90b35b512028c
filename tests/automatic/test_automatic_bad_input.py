"""AutomaticMaskGenerator on bad input (issue 23): parameters checked at construction, tiny images
refused fast, and a warning naming the thresholds when none lets a mask through."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _synthetic import make_tiny_sam

from napari_sam.automatic.generator import MIN_SIDE, AutomaticMaskGenerator
from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamInputWarning, SamUserError


@pytest.fixture(scope="module")
def pred():
    return SamPredictor(make_tiny_sam(), device="cpu")


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_points_per_side_must_be_positive(pred, n):
    with pytest.raises(SamUserError, match=r"points_per_side must be an integer >= 1"):
        AutomaticMaskGenerator(pred, points_per_side=n)


@pytest.mark.parametrize("n", [0, -64])
def test_points_per_batch_must_be_positive(pred, n):
    with pytest.raises(ValueError, match=r"points_per_batch must be an integer >= 1, got"):
        AutomaticMaskGenerator(pred, points_per_batch=n)


@pytest.mark.parametrize("name", ["pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"])
@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_thresholds_must_lie_in_0_1(pred, name, value):
    with pytest.raises(SamUserError, match=rf"{name} must be in \[0, 1\], got"):
        AutomaticMaskGenerator(pred, **{name: value})


def test_other_parameters_are_checked(pred):
    with pytest.raises(SamUserError, match="leaves no point in the last crop layer"):
        AutomaticMaskGenerator(pred, points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2)
    with pytest.raises(SamUserError, match="crop_n_layers must be an integer >= 0"):
        AutomaticMaskGenerator(pred, crop_n_layers=-1)
    with pytest.raises(SamUserError, match=r"point_grids\[0\] must be a non-empty \(N, 2\) array of \(x, y\) in \[0, 1\]"):
        AutomaticMaskGenerator(pred, points_per_side=None, point_grids=[np.array([[0.5, 2.0]])])
    AutomaticMaskGenerator(pred, points_per_side=8, pred_iou_thresh=0, stability_score_thresh=1.0)  # bounds ok


@pytest.mark.parametrize("shape", [(1, 1), (1, 500), (500, 3), (MIN_SIDE - 1, MIN_SIDE - 1)])
def test_tiny_images_are_refused_fast(pred, shape):
    gen = AutomaticMaskGenerator(pred)
    t = time.perf_counter()
    with pytest.raises(SamUserError, match=rf"at least {MIN_SIDE} x {MIN_SIDE} pixels, got {shape[0]} x {shape[1]}"):
        gen.generate(np.full(shape, 7, np.uint8))
    assert time.perf_counter() - t < 1.0


def test_nothing_passing_warns_with_the_thresholds_and_the_registry_advice(pred):
    img = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    gen = AutomaticMaskGenerator(pred, points_per_side=4, pred_iou_thresh=1.0, stability_score_thresh=1.0)
    with pytest.warns(SamInputWarning, match=r"no mask passed the thresholds \(pred_iou_thresh=1, stability_score_thresh=1, "
                      r"box_nms_thresh=0\.7.*lower pred_iou_thresh") as rec:
        out = gen.generate(img)
    assert out == [] and out.note == gen.last_note == str(rec[0].message)  # the result says it too
    assert "no mask passed the thresholds" in out.note
    assert len([w for w in rec if issubclass(w.category, SamInputWarning)]) == 1
    # a model with a registry name: its recommended thresholds are named
    model = make_tiny_sam()
    model.model_name = "nano_nuclei"
    gen = AutomaticMaskGenerator(SamPredictor(model, device="cpu"), points_per_side=4, pred_iou_thresh=1.0)
    with pytest.warns(SamInputWarning, match=r"registry recommends for 'nano_nuclei': pred_iou_thresh=0\.5, "
                      r"stability_score_thresh=0\.9, box_nms_thresh=0\.2.*automatic_defaults\('nano_nuclei'\)"):
        assert gen.generate_labels(img).max() == 0
    assert "registry recommends for 'nano_nuclei'" in gen.last_note
    gen = AutomaticMaskGenerator(pred, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    found = gen.generate(img)
    assert found and found.note == gen.last_note == ""
