"""Bad input at the predictor's edge (issue 23): prompts, the model argument, devices, degenerate images.

Each case asserts the project's error type (``SamUserError`` is a ``ValueError``; ``SamTypeError`` is
also a ``TypeError``) and the words of the message that tell the user what to do.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from _synthetic import make_tiny_sam

from napari_sam.engine.device import pick_device
from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.transforms import ResizeLongestSide
from napari_sam.errors import SamInputWarning, SamTypeError, SamUserError

H, W = 60, 80


@pytest.fixture(scope="module")
def pred():
    p = SamPredictor(make_tiny_sam(), device="cpu")
    rng = np.random.default_rng(0)
    p.set_image((rng.random((H, W, 3)) * 255).astype(np.uint8))
    return p


PT, LAB = np.array([[10.0, 20.0]]), np.array([1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_point_coords_are_refused(pred, bad):
    with pytest.raises(SamUserError, match=r"point_coords must be finite.*NaN/inf"):
        pred.predict(np.array([[bad, 5.0]]), LAB)
    with pytest.raises(ValueError, match="point_coords must be finite"):
        pred.predict_batch(np.array([[[1.0, bad]]]), np.array([[1]]))


def test_non_finite_box_and_mask_input_are_refused(pred):
    with pytest.raises(SamUserError, match=r"box must be finite \(\(x0, y0, x1, y1\)"):
        pred.predict(box=np.array([0, 0, np.nan, 10]))
    with pytest.raises(SamUserError, match="boxes must be finite"):
        pred.predict_batch(boxes=np.array([[0, 0, 10, np.inf]]))
    m = np.zeros((1, *pred.mask_input_size), np.float32)
    m[0, 3, 4] = np.nan
    with pytest.raises(SamUserError, match="mask_input must be finite.*low-res logits"):
        pred.predict(PT, LAB, mask_input=m)
    with pytest.raises(SamUserError, match="mask_input must be finite"):
        pred.predict_batch(PT[None], LAB[None], mask_input=m[None])


@pytest.mark.parametrize("labels", [[5], [-7], [2]])
def test_labels_outside_0_1_are_refused(pred, labels):
    with pytest.raises(SamUserError, match=r"point_labels must be -1 or 0 or 1 \(1 positive, 0 negative, -1 padding\)"
                       r".*use 1 for points"):
        pred.predict(PT, np.array(labels))


def test_padding_label_is_accepted(pred):
    coords = np.array([[[10.0, 20.0], [0.0, 0.0]]])
    masks, scores, _ = pred.predict_batch(coords, np.array([[1, -1]]))  # -1: padding, accepted
    assert masks.shape == (1, 1, H, W) and np.isfinite(scores).all()
    one = pred.predict(coords[0], np.array([1, -1]), multimask_output=False)[1]  # as the official predictor
    np.testing.assert_allclose(one, scores[0], atol=1e-5)
    with pytest.raises(SamUserError, match=r"-1 padding of shorter rows\).*\[3\]"):
        pred.predict_batch(coords, np.array([[1, 3]]))


def test_string_and_fractional_labels_get_a_clear_type_error(pred):
    for bad in (np.array(["fg"]), np.array([object()], dtype=object), np.array([0.5])):
        with pytest.raises(SamTypeError, match=r"point_labels must be integers \(1 positive, 0 negative, -1 padding\)"):
            pred.predict(PT, bad)
    with pytest.raises(TypeError, match="point_labels must be integers"):  # still a TypeError for old callers
        pred.predict(PT, ["fg"])
    # integral floats and bools keep working
    a = pred.predict(PT, np.array([1.0]))[1]
    b = pred.predict(PT, np.array([True]))[1]
    np.testing.assert_allclose(a, b)


def test_string_coords_get_a_clear_type_error(pred):
    with pytest.raises(SamTypeError, match=r"point_coords must hold numbers \(\(x, y\) pixels\).*'a'"):
        pred.predict(np.array([["a", "b"]]), LAB)


def test_inverted_boxes_are_refused_saying_the_corner_order(pred):
    with pytest.raises(SamUserError, match=r"x0 <= x1 and y0 <= y1.*got \[50\.0, 5\.0, 10\.0, 40\.0\].*swap"):
        pred.predict(box=np.array([50, 5, 10, 40]))
    with pytest.raises(SamUserError, match=r"boxes must be \(x0, y0, x1, y1\).*and 1 more"):
        pred.predict_batch(boxes=np.array([[0, 40, 10, 5], [0, 0, 5, 5], [9, 9, 1, 1]]))
    pred.predict(box=np.array([5, 5, 5, 5]))  # a degenerate (zero-size) box is allowed


def test_prompts_outside_the_image_warn_once(pred):
    with pytest.warns(SamInputWarning, match=r"1 of 2 point\(s\).*outside the image \(x in \[0, 80\], y in \[0, 60\]\)") as rec:
        pred.predict(np.array([[10.0, 10.0], [500.0, 10.0]]), np.array([1, 0]))
    assert len([w for w in rec if issubclass(w.category, SamInputWarning)]) == 1
    with pytest.warns(SamInputWarning, match=r"point\(s\).*and 1 of 1 box\(es\)") as rec:
        pred.predict(np.array([[-5.0, 10.0]]), LAB, box=np.array([100, 100, 120, 130]))
    assert len([w for w in rec if issubclass(w.category, SamInputWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred.predict(np.array([[0.0, 0.0], [80.0, 60.0]]), np.array([1, 1]))  # on the border: fine
        pred.predict(box=np.array([-20, -20, 10, 10]))  # partly outside: fine
        pred.predict_batch(np.array([[[10.0, 10.0], [1e6, 1e6]]]), np.array([[1, -1]]))  # padding ignored


def test_a_registry_name_is_loaded_and_none_is_refused():
    p = SamPredictor("nano_nuclei", device="cpu")
    assert getattr(p.model, "model_name", None) == "nano_nuclei"
    for bad in (None, 3, object()):
        with pytest.raises(SamTypeError, match=r"needs a SAM model, a registry name or a checkpoint path.*napari_sam\.load_model"):
            SamPredictor(bad, device="cpu")


def test_unknown_device_names_the_choices():
    with pytest.raises(SamUserError, match=r"device 'banana' is not a device: use 'cpu', 'cuda'.*'mps'"):
        pick_device("banana")
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        SamPredictor(make_tiny_sam(), device="banana")


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (1, 1), (2, 3000), (1, 300)])
def test_degenerate_images_get_a_defined_result(shape):
    h, w = shape
    tr = ResizeLongestSide(256)
    nh, nw = tr.get_preprocess_shape(h, w, 256)
    assert min(nh, nw) >= 1 and max(nh, nw) == 256
    p = SamPredictor(make_tiny_sam(), device="cpu")
    t = time.perf_counter()
    p.set_image((np.random.default_rng(1).random(shape) * 255).astype(np.uint8))
    masks, scores, low = p.predict(np.array([[0.0, 0.0]]), np.array([1]))
    assert masks.shape == (3, h, w) and np.isfinite(scores).all()
    assert time.perf_counter() - t < 10
