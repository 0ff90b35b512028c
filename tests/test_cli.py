"""The ``napari-sam`` command line (batch use)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.models import build_model
from napari_sam.weights.loading import load_model
from napari_sam.weights.registry import REGISTRY


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("vit_b", "vit_t", "nano_nuclei"):
        assert name in out
    assert len(out.strip().splitlines()) == len(REGISTRY)


def test_auto_writes_the_same_labels_as_the_api(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "nano_random.pt"
    torch.save(build_model("nano").state_dict(), ckpt)  # the official state-dict format
    rng = np.random.default_rng(0)
    image = (rng.random((96, 128)) * 255).astype(np.uint8)
    src, out = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(src, image)
    args = ["auto", str(src), "-o", str(out), "--model", str(ckpt), "--points-per-side", "4"]
    args += ["--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    assert cli.main(args) == 0
    written = tifffile.imread(out)
    expected = AutomaticMaskGenerator(
        load_model(ckpt), points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate_labels(image)
    assert written.shape == image.shape
    np.testing.assert_array_equal(written, expected)
    assert f"{int(expected.max())} objects" in capsys.readouterr().out


def test_auto_tiles(tmp_path) -> None:
    """``--tiles``: a 600 x 700 image (nano's input is 512 px) in 512-px tiles overlapping by 128,
    duplicates across tiles at the box NMS threshold (SAM's 0.7 for a checkpoint file)."""
    torch.manual_seed(1)
    ckpt = tmp_path / "nano_random.pt"
    torch.save(build_model("nano").state_dict(), ckpt)
    image = (np.random.default_rng(1).random((600, 700)) * 255).astype(np.uint8)
    src, out = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(src, image)
    args = ["auto", str(src), "-o", str(out), "--model", str(ckpt), "--points-per-side", "4", "--tiles"]
    assert cli.main(args + ["--pred-iou-thresh", "0", "--stability-score-thresh", "0"]) == 0
    expected = AutomaticMaskGenerator(
        load_model(ckpt), points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        tile_size=512, tile_overlap=128, crop_nms_thresh=0.7,
    ).generate_labels(image)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_auto_tiles_follow_the_model(tmp_path) -> None:
    """lite_medsam_nano_nuclei segments a 300 x 320 image in its 256-px tiles unless ``--no-tiles``."""
    image = (np.random.default_rng(2).random((300, 320)) * 255).astype(np.uint8)
    image[100:130, 100:130] = 250
    src, out = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(src, image)
    args = ["auto", str(src), "-o", str(out), "--model", "lite_medsam_nano_nuclei", "--points-per-side", "3",
            "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--device", "cpu"]
    model = load_model("lite_medsam_nano_nuclei", device="cpu")
    kw = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.2}
    for flag, tiles in (([], {"tile_size": 256, "tile_overlap": 64, "crop_nms_thresh": 0.2}), (["--no-tiles"], {})):
        assert cli.main(args + flag) == 0
        expected = AutomaticMaskGenerator(model, **kw, **tiles).generate_labels(image)
        np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert not np.array_equal(tifffile.imread(out), AutomaticMaskGenerator(
        model, **kw, tile_size=256, tile_overlap=64, crop_nms_thresh=0.2).generate_labels(image))


def test_auto_default_model_uses_its_thresholds(tmp_path) -> None:
    """No model and no thresholds: the packaged nano_nuclei with its registry defaults."""
    rng = np.random.default_rng(1)
    image = (rng.random((64, 80)) * 255).astype(np.uint8)
    image[20:40, 30:50] = 250
    src, out = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(src, image)
    assert cli.main(["auto", str(src), "-o", str(out), "--points-per-side", "4", "--device", "cpu"]) == 0
    expected = AutomaticMaskGenerator(
        load_model(device="cpu"), points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.9,
        box_nms_thresh=0.2,
    ).generate_labels(image)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_errors_are_one_line_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8))
    assert cli.main(["auto", str(image), "-o", str(tmp_path / "o.tif"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-sam: error:") and "broken.pt" in err
    assert cli.main(["fetch", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err
