"""VolumeResult keeps each mask as its bounding-box crop: same masks, labels and painting as full
arrays, with memory that follows the objects and not the slices' size."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.volume.result import SliceMasks, VolumeResult, crop_mask, uncrop_mask


def _disk(hw, cy, cx, r) -> np.ndarray:
    yy, xx = np.ogrid[: hw[0], : hw[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_crop_round_trip_and_empty() -> None:
    m = _disk((40, 50), 10, 30, 6)
    y0, x0, crop = crop_mask(m)
    assert (y0, x0, crop.shape) == (5, 25, (11, 11))
    np.testing.assert_array_equal(uncrop_mask((y0, x0, crop), (40, 50)), m)
    empty = crop_mask(np.zeros((40, 50), bool))
    assert empty[2].shape == (0, 0) and not uncrop_mask(empty, (40, 50)).any()


def test_result_reads_and_paints_as_full_masks() -> None:
    hw = (64, 80)
    a, b = _disk(hw, 20, 20, 8), _disk(hw, 24, 26, 8)  # overlapping: the higher score wins
    res = VolumeResult(shape=(3, *hw))
    res.masks.setdefault(1, {})[7] = a
    res.masks[1][9] = b
    res.masks[2] = {7: a}
    res.scores[1] = {7: 0.9, 9: 0.5}
    res.scores[2] = {7: 0.8}
    assert isinstance(res.masks[1], SliceMasks) and isinstance(res.masks[2], SliceMasks)
    np.testing.assert_array_equal(res.masks[1][7], a)
    np.testing.assert_array_equal(res.object_masks(9)[1], b)
    assert res.slices == [1, 2] and res.ids == [7, 9]
    expected = np.zeros(hw, np.int32)
    expected[b] = 9
    expected[a] = 7
    np.testing.assert_array_equal(res.label_slice(1), expected)
    labels = np.zeros((3, *hw), np.uint16)
    labels[2, 0, 0] = 7  # an old pixel of object 7 is replaced by its new mask
    assert res.paint(labels) == [1, 2]
    np.testing.assert_array_equal(labels[1], expected)
    assert labels[2, 0, 0] == 0 and (labels[2] == 7).sum() == a.sum()
    del res.masks[1][9]
    assert list(res.masks[1]) == [7]


def test_memory_follows_the_objects_not_the_slice_size() -> None:
    hw = (2048, 2048)
    res = VolumeResult(shape=(50, *hw))
    for z in range(50):
        res.masks.setdefault(z, {})[1] = _disk(hw, 1000, 1000, 20)
    held = sum(per.nbytes for per in res.masks.values())
    assert held == 50 * 39 * 39  # 76 KB, where full masks would take 50 x 4 MiB
    with pytest.raises(ValueError, match="slice shape"):
        res.masks[0][2] = np.zeros((10, 10), bool)
