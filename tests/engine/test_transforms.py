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


# --------------------------------------------------------------------------- area resize (LiteMedSAM)

# shrinking by 2, 4, 3, non-integer ratios (DSB2018's sizes), and enlarging
AREA_SHAPES = [(512, 512, 3), (1024, 1024), (768, 768, 3), (520, 696), (256, 320, 3), (512, 640), (603, 1272, 3),
               (260, 347), (100, 100, 3), (64, 200), (37, 51, 3)]


@pytest.mark.parametrize("shape", AREA_SHAPES)
def test_area_resize_matches_opencv(shape):
    """OpenCV's INTER_AREA (what LiteMedSAM's official code resizes with), without OpenCV: equal but
    for off-by-one roundings (float accumulation order) in at most 0.2 % of the pixels, measured
    0.13 % at 256x320 and none at integer ratios or when enlarging."""
    cv2 = pytest.importorskip("cv2")
    from napari_sam.engine.transforms import resize_area

    img = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    newh, neww = ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], 256)
    ours = ResizeLongestSide(256, interpolation="area").apply_image(img)
    ref = cv2.resize(img, (neww, newh), interpolation=cv2.INTER_AREA)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    diff = np.abs(ours.astype(int) - ref)
    assert diff.max() <= 1 and np.mean(diff > 0) <= 0.002
    if (shape[0] % newh == 0 and shape[1] % neww == 0) or max(shape) < 256:  # integer ratios, enlarging: exact
        assert np.array_equal(ours, ref)
    assert np.array_equal(resize_area(img, img.shape[:2]), img)


def test_area_resize_of_a_constant_is_constant_and_means_blocks():
    from napari_sam.engine.transforms import resize_area

    assert np.all(resize_area(np.full((300, 500, 3), 77, np.uint8), (154, 256)) == 77)
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    assert np.array_equal(resize_area(img, (2, 2)), [[25, 45], [105, 125]])  # 2x2 means, half up
    with pytest.raises(ValueError, match="interpolation"):
        ResizeLongestSide(256, interpolation="cubic")


def test_model_input_follows_the_models_preprocessing():
    """min-max to [0, 1] over the resized image, then zero padding (LiteMedSAM); SAM's mean/std otherwise."""
    from napari_sam.engine.transforms import model_input
    from napari_sam.models.lite_medsam import build_lite_medsam
    from napari_sam.models.sam import build_model

    img = np.random.default_rng(3).integers(20, 200, (300, 400, 3), dtype=np.uint8)
    lite = build_lite_medsam()
    x, original, size = model_input(img, lite, ResizeLongestSide(256, "area"), "cpu")
    assert original == (300, 400) and size == (192, 256) and x.shape == (1, 3, 256, 256)
    inside = x[..., :192, :256]
    assert inside.min() == 0 and inside.max() == 1 and torch.all(x[..., 192:, :] == 0)
    sam = build_model("vit_t")
    y, _, _ = model_input(img, sam, ResizeLongestSide(1024), "cpu")
    resized = torch.from_numpy(ResizeLongestSide(1024).apply_image(img)).permute(2, 0, 1)[None].float()
    torch.testing.assert_close(y[..., :768, :], (resized - sam.pixel_mean) / sam.pixel_std)
    flat = np.full((50, 60), 9, np.uint8)  # a constant image: zeros, not NaN
    z, _, _ = model_input(flat, lite, ResizeLongestSide(256, "area"), "cpu")
    assert torch.all(z == 0)


# ---------------------------------------------------------------------- zoom: small images not enlarged


@pytest.mark.parametrize(
    "hw, zoom, expected",
    [
        ((100, 100), None, (512, 512)),  # SAM's resize: enlarged to fill the input
        ((100, 100), 1.0, (100, 100)),  # own pixel scale
        ((100, 60), 2.0, (200, 120)),
        ((100, 60), 0.5, (50, 30)),
        ((300, 200), 2.0, (512, 341)),  # does not fit at 2x: filled as SAM's resize
        ((1000, 800), 1.0, (512, 410)),  # larger than the input: shrunk as before
    ],
)
def test_zoomed_shape(hw, zoom, expected):
    from napari_sam.engine.transforms import zoomed_shape

    assert zoomed_shape(*hw, 512, zoom) == expected


def test_zoomed_shape_rejects_bad_zoom():
    from napari_sam.engine.transforms import zoomed_shape

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="zoom"):
            zoomed_shape(10, 10, 512, bad)


@pytest.mark.parametrize("zoom", [1.0, 2.5])
def test_model_input_at_a_zoom_is_the_scaled_image_zero_padded(zoom):
    from _synthetic import tiny_sam

    from napari_sam.engine.transforms import make_transform, model_input

    model = tiny_sam(img_size=128)
    img = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    x, orig, size = model_input(img, model, make_transform(model), "cpu", zoom=zoom)
    h, w = int(40 * zoom + 0.5), int(30 * zoom + 0.5)
    assert x.shape == (1, 3, 128, 128) and orig == (40, 30) and size == (h, w)
    assert torch.count_nonzero(x[..., h:, :]) == 0 and torch.count_nonzero(x[..., :, w:]) == 0  # padding
    if zoom == 1.0:  # unresized: the image itself, normalised
        rgb = torch.from_numpy(np.repeat(img[..., None], 3, axis=2)).permute(2, 0, 1).float()
        expected = (rgb - model.pixel_mean) / model.pixel_std
        torch.testing.assert_close(x[0, :, :h, :w], expected)
    fill, _, fsize = model_input(img, model, make_transform(model), "cpu", zoom=None)
    assert fsize == (128, 96)  # the old default: enlarged 3.2x
