"""Cross-cutting bad input (issue 23), engine side (no napari): API traps and bounded long calls.

The per-module cases stay next to their module's tests (test modules mirror the source):
``tests/engine/test_bad_prompts.py`` (prompts, model argument, devices, 1xN images),
``tests/automatic/test_automatic_bad_input.py`` (automatic-mask parameters),
``tests/volume/test_volume_bad_input.py`` (slice axis, labels' shape), ``tests/viewer/test_viewer_faults.py``
and ``tests/_qt/test_widget_faults.py`` (viewer and widget). This module holds what crosses them: seeds
in the wrong coordinate order, huge prompt batches, huge tiled images, optional dependencies. Each
case asserts the project's error type and the words that tell the user what to do; docs/errors.md
lists them all.
"""

from __future__ import annotations

import numpy as np
import pytest
from _synthetic import make_tiny_sam

from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamTypeError, SamUserError
from napari_sam.volume.propagate import Prompt, segment_volume

VOL = np.zeros((4, 20, 30), np.uint8)


@pytest.fixture(scope="module")
def pred():
    return SamPredictor(make_tiny_sam(), device="cpu")


def _seeds(prompt):
    return {1: {2: prompt}}


# ---------------------------------------------------------------- seeds: (x, y) expected
@pytest.mark.parametrize("points", [[[2, 5, 7]], [[2, 5, 7], [2, 6, 9]], [2, 5, 7]])
def test_seed_points_given_as_zyx_rows_say_so(pred, points):
    """(z, y, x) rows (napari order) used to fail with a raw reshape error, or for two of them to be
    silently read as three (x, y) points."""
    with pytest.raises(SamUserError, match=r"look like napari \(z, y, x\) rows.*\(x, y\) pixels of their slice"
                       r".*points\[:, \[2, 1\]\]"):
        segment_volume(pred, VOL, _seeds({"points": points}))


@pytest.mark.parametrize("points", [[[1, 2, 3, 4]], np.zeros((1, 2, 2)), []])
def test_seed_points_of_other_shapes(pred, points):
    with pytest.raises(SamUserError, match=r"seed points must have shape \(N, 2\), got .*x = column, y = row"):
        segment_volume(pred, VOL, _seeds({"points": points}))


def test_seed_points_must_be_finite_numbers(pred):
    with pytest.raises(SamTypeError, match="seed points must be numbers"):
        segment_volume(pred, VOL, _seeds({"points": [["a", "b"]]}))
    with pytest.raises(SamUserError, match="seed points must be finite.*NaN/inf"):
        segment_volume(pred, VOL, _seeds({"points": [[np.nan, 3]]}))


def test_seed_labels_count_and_values(pred):
    with pytest.raises(SamUserError, match=r"1 point\(s\) but 2 label\(s\): give one label per point"):
        segment_volume(pred, VOL, _seeds({"points": [[3, 4]], "labels": [1, 0]}))
    with pytest.raises(SamUserError, match=r"seed labels must be 1 \(positive\) or 0 \(negative\), got \[2\]"):
        segment_volume(pred, VOL, _seeds({"points": [[3, 4]], "labels": [2]}))


def test_seed_box_shape_and_order(pred):
    with pytest.raises(SamUserError, match=r"4 numbers \(x0, y0, x1, y1\), got shape \(6,\) \(a 3D box\?"):
        segment_volume(pred, VOL, _seeds({"box": [0, 1, 2, 3, 10, 12]}))
    with pytest.raises(SamUserError, match=r"x0 <= x1 and y0 <= y1, got \[10\.0, 2\.0, 3\.0, 8\.0\]: swap"):
        segment_volume(pred, VOL, _seeds({"box": [10, 2, 3, 8]}))


def test_seed_of_the_wrong_kind(pred):
    with pytest.raises(SamTypeError, match=r"a Prompt or a dict with keys points, labels, box, mask; got list"):
        segment_volume(pred, VOL, _seeds([[3, 4]]))
    with pytest.raises(SamUserError, match=r"unknown prompt keys \['point'\]"):
        segment_volume(pred, VOL, _seeds({"point": [[3, 4]]}))
    with pytest.raises(SamUserError, match="needs points, a box or a non-empty mask"):
        segment_volume(pred, VOL, _seeds({"mask": np.zeros((20, 30), bool)}))


def test_right_seeds_still_run(pred):
    p = Prompt.coerce({"points": [5, 6]}, (20, 30))  # one (x, y) point as a flat pair
    assert p.points.tolist() == [[5.0, 6.0]] and p.labels.tolist() == [1]
    res = segment_volume(pred, VOL, _seeds({"points": [[5, 6]], "box": (1, 2, 20, 15)}), min_area=0,
                         iou_threshold=float("-inf"), overlap_threshold=0)
    assert 2 in res.slices
