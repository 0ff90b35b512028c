"""ResizeLongestSide: bit-identical to the official transform (PIL bilinear), coords and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.transforms import ResizeLongestSide


@pytest.fixture(scope="module")
def official_transform(reference):
    import importlib

    return importlib.import_module("segment_anything.utils.transforms").ResizeLongestSide(1024)


@pytest.mark.parametrize(
    "shape", [(600, 800, 3), (1024, 1024, 3), (2048, 1536, 3), (37, 1000, 3), (1, 1, 3), (5, 3)]
)
def test_apply_image_bit_identical(official_transform, shape):
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ours = ResizeLongestSide(1024).apply_image(img)
    ref = official_transform.apply_image(img)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def test_apply_image_rejects_non_uint8():
    with pytest.raises(ValueError, match=r"uint8.*shape \(4, 4, 3\) dtype float64"):
        ResizeLongestSide(1024).apply_image(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"shape \(0, 4, 3\)"):
        ResizeLongestSide(1024).apply_image(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize("size", [(600, 800), (2048, 1536), (37, 1000), (1, 1)])
def test_coords_and_boxes_match_official(official_transform, size):
    t = ResizeLongestSide(1024)
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 500, (3, 5, 2))
    boxes = rng.uniform(0, 500, (4, 4))
    assert np.array_equal(t.apply_coords(coords, size), official_transform.apply_coords(coords, size))
    assert np.array_equal(t.apply_boxes(boxes, size), official_transform.apply_boxes(boxes, size))
    ct, bt = torch.from_numpy(coords).float(), torch.from_numpy(boxes).float()
    assert torch.equal(t.apply_coords_torch(ct, size), official_transform.apply_coords_torch(ct, size))
    assert torch.equal(t.apply_boxes_torch(bt, size), official_transform.apply_boxes_torch(bt, size))
    before = coords.copy()
    t.apply_coords(coords, size)
    t.apply_coords_torch(ct, size)
    assert np.array_equal(coords, before) and torch.equal(ct, torch.from_numpy(before).float())  # inputs kept


def test_coords_values_and_errors():
    t = ResizeLongestSide(1024)
    assert t.get_preprocess_shape(600, 800, 1024) == (768, 1024)
    assert t.get_preprocess_shape(2048, 1536, 1024) == (1024, 768)
    np.testing.assert_allclose(t.apply_coords(np.array([[800, 600]]), (600, 800)), [[1024, 768]])
    np.testing.assert_allclose(t.apply_boxes(np.array([0, 0, 400, 300]), (600, 800)), [[0, 0, 512, 384]])
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\).*\(3, 3\)"):
        t.apply_coords(np.zeros((3, 3)), (10, 10))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\).*\(3,\)"):
        t.apply_boxes(np.zeros(3), (10, 10))


def test_apply_image_torch_uses_height_width():
    out = ResizeLongestSide(64).apply_image_torch(torch.rand(2, 3, 30, 40))
    assert out.shape == (2, 3, 48, 64)
