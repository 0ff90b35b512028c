"""segment_volume / EmbeddingStore on bad input (issue 23): the slice axis and the labels' shape."""

from __future__ import annotations

import numpy as np
import pytest
from _synthetic import make_tiny_sam

from napari_sam.engine.predictor import SamPredictor
from napari_sam.errors import SamUserError
from napari_sam.volume.propagate import segment_volume
from napari_sam.volume.store import EmbeddingStore


@pytest.fixture(scope="module")
def pred():
    return SamPredictor(make_tiny_sam(), device="cpu")


VOL = np.zeros((4, 20, 30), np.uint8)
SEEDS = {1: {0: {"points": [[5, 5]], "labels": [1]}}}


@pytest.mark.parametrize("axis", [3, 5, -4])
def test_axis_out_of_range_is_refused(pred, axis):
    with pytest.raises(SamUserError, match=rf"axis {axis} is out of range for a volume of shape \(4, 20, 30\) "
                       r"\(3 axes\): the slice axis must be one of 0\.\.2 \(or -3\.\.-1\)"):
        segment_volume(pred, VOL, SEEDS, axis=axis)
    with pytest.raises(ValueError, match="out of range"):
        EmbeddingStore(pred, VOL, axis=axis)


def test_axis_on_an_rgb_volume(pred):
    vol = np.zeros((4, 20, 30, 3), np.uint8)
    with pytest.raises(SamUserError, match=r"0\.\.2 \(or -4\.\.-2\)"):
        EmbeddingStore(pred, vol, axis=4)
    assert EmbeddingStore(pred, vol, axis=-2).axis == 2


def test_labels_of_the_wrong_shape_name_both_shapes(pred):
    with pytest.raises(SamUserError, match=r"labels has shape \(4, 30, 20\) but the volume has shape \(4, 20, 30\).*"
                       r"labels must have shape \(4, 20, 30\)"):
        segment_volume(pred, VOL, labels=np.zeros((4, 30, 20), np.int32))
    rgb = np.zeros((4, 20, 30, 3), np.uint8)
    with pytest.raises(SamUserError, match=r"labels has shape \(4, 20, 30, 3\) but the volume has shape "
                       r"\(4, 20, 30, 3\) \(colour last\).*\(4, 20, 30\)"):
        segment_volume(pred, rgb, labels=np.zeros((4, 20, 30, 3), np.int32))
    out = segment_volume(pred, VOL, labels=np.zeros((4, 20, 30), np.int32))  # the right shape runs
    assert out is not None
