"""to_sam_image: napari image slices of every dtype and shape -> (H, W, 3) uint8."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.images import to_sam_image


def test_uint8_rgb_passes_unchanged_and_rgba_drops_alpha():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert to_sam_image(rgb) is rgb
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], -1)
    out = to_sam_image(rgba, rgb=True)
    assert out.shape == (5, 7, 3) and np.array_equal(out, rgb) and out.flags.c_contiguous
    assert np.array_equal(to_sam_image(rgb, contrast_limits=(10, 20)), rgb)  # ignored for uint8


def test_uint8_gray_is_stacked():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_sam_image(g)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], g) for c in range(3))
    assert np.array_equal(to_sam_image(g[..., None]), out)  # (H, W, 1) is gray


def test_bool():
    b = np.array([[True, False], [False, True]])
    assert np.array_equal(to_sam_image(b)[..., 0], [[255, 0], [0, 255]])


def test_contrast_limits_uint16():
    x = np.array([[0, 1000, 2000], [3000, 4000, 65535]], np.uint16)
    out = to_sam_image(x, contrast_limits=(1000, 3000))[..., 0]
    assert out.tolist() == [[0, 0, 128], [255, 255, 255]]  # 127.5 rounds to even 128, clipped both ends


def test_percentiles_default_and_no_overflow():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**31 - 1, (64, 64)).astype(np.int64) * 4  # beyond int32, no overflow
    out = to_sam_image(x)[..., 0]
    lo, hi = np.percentile(x, (0.1, 99.9))
    expected = np.rint(np.clip((x - lo) * (255 / (hi - lo)), 0, 255)).astype(np.uint8)
    assert np.array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255


def test_float_and_negative_ints():
    f = np.linspace(-1.5, 2.5, 100, dtype=np.float32).reshape(10, 10)
    out = to_sam_image(f, contrast_limits=(-1.5, 2.5))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255 and np.all(np.diff(out.ravel().astype(int)) >= 0)
    i = np.array([[-100, 0], [50, 100]], np.int16)
    assert to_sam_image(i, contrast_limits=(-100, 100))[..., 0].tolist() == [[0, 128], [191, 255]]


def test_float_rgb_in_unit_range_uses_0_1():
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = (0.5, 1.0, 0.0)
    assert to_sam_image(rgb)[0, 0].tolist() == [128, 255, 0]


def test_nan_maps_to_low_and_inf_clips():
    f = np.array([[np.nan, 0.0, 1.0], [np.inf, -np.inf, 0.5]])
    out = to_sam_image(f, contrast_limits=(0, 1))[..., 0]
    assert out.tolist() == [[0, 0, 255], [255, 0, 128]]
    auto = to_sam_image(f)[..., 0]  # percentiles of the finite values only
    assert auto[0, 0] == 0 and auto[1, 0] == 255 and auto[0, 2] == 255
    assert np.all(to_sam_image(np.full((3, 3), np.nan)) == 0)


def test_constant_and_single_pixel():
    assert np.all(to_sam_image(np.full((4, 5), 7.5)) == 0)
    assert np.all(to_sam_image(np.full((4, 5), 300, np.uint16)) == 0)
    one = to_sam_image(np.array([[42.0]]))
    assert one.shape == (1, 1, 3) and np.all(one == 0)
    assert to_sam_image(np.array([[200]], np.uint8)).tolist() == [[[200, 200, 200]]]
    # equal limits threshold at the limit
    assert to_sam_image(np.array([[1.0, 2.0, 3.0]]), contrast_limits=(2, 2))[..., 0].tolist() == [[0, 0, 255]]


@pytest.mark.parametrize(
    "arr, kwargs, match",
    [
        (np.zeros((0, 5)), {}, r"empty \(0 pixels\): shape \(0, 5\)"),
        (np.zeros((4, 0, 3), np.uint8), {}, r"empty.*\(4, 0, 3\)"),
        (np.zeros(5), {}, r"shape \(5,\)"),
        (np.zeros((2, 3, 4, 5)), {}, r"shape \(2, 3, 4, 5\)"),
        (np.zeros((4, 4, 2)), {}, r"shape \(4, 4, 2\)"),
        (np.zeros((4, 4)), {"rgb": True}, r"rgb=True.*\(4, 4\)"),
        (np.zeros((4, 4, 3)), {"rgb": False}, r"rgb=False.*\(4, 4, 3\)"),
        (np.zeros((4, 4)), {"contrast_limits": (5, 1)}, "contrast_limits"),
        (np.zeros((4, 4)), {"contrast_limits": (0, np.nan)}, "contrast_limits"),
        (np.zeros((4, 4), np.complex64), {}, "unsupported image dtype complex64"),
        (np.array([["a"]]), {}, "unsupported image dtype"),
    ],
)
def test_bad_inputs(arr, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_sam_image(arr, **kwargs)


def test_input_not_modified():
    x = np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32)
    before = x.copy()
    to_sam_image(x)
    assert np.array_equal(x, before, equal_nan=True)
