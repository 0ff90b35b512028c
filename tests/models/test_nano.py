"""The project's own "nano" architecture and its shipped weights (``nano_nuclei``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.models.nano import build_nano
from napari_sam.models.sam import available_archs, build_model, infer_arch

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "napari_sam" / "_weights" / "nano_nuclei.pt"


@pytest.mark.parametrize("arch", ["nano", "nano_l"])
def test_build_and_infer_arch(arch):
    assert arch in available_archs()
    model = build_model(arch)
    assert model.arch == arch
    assert model.img_size == 512
    assert model.embedding_size == (64, 64)
    assert infer_arch(model.state_dict()) == arch  # the two variants are told apart by their widths
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 20e6  # fp32 file under 20 MB


def test_encoder_shapes_any_multiple_of_32():
    enc = build_nano(img_size=128).image_encoder.eval()
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 128, 128)).shape == (1, 128, 16, 16)
        assert enc(torch.zeros(2, 3, 96, 64)).shape == (2, 128, 12, 8)


def test_predictor_interfaces_like_sam():
    from napari_sam.engine.predictor import SamPredictor

    model = build_nano(img_size=128)
    pred = SamPredictor(model, device="cpu")
    img = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    pred.set_image(img)
    masks, scores, low = pred.predict(np.array([[10.0, 20.0]]), np.array([1]))
    assert masks.shape == (3, 50, 70) and scores.shape == (3,) and low.shape == (3, 64, 64)
    masks, _, _ = pred.predict(box=np.array([5, 5, 30, 30]), mask_input=low[:1], multimask_output=False)
    assert masks.shape == (1, 50, 70)


def test_full_size_low_res_masks_are_256():
    model = build_model("nano")
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((torch.tensor([[[100.0, 100.0]]]), torch.tensor([[1]])), None,
                                             torch.zeros(1, 1, 256, 256))
        low, iou = model.mask_decoder(torch.zeros(1, 128, 64, 64), model.prompt_encoder.get_dense_pe(),
                                      sparse, dense, True)
    assert low.shape == (1, 3, 256, 256) and iou.shape == (1, 3)


def test_shipped_weights_segment_nuclei(shared_data):
    """Centre clicks on nuclei of a validation image (the dataset's common 256x256 fluorescence type)
    give median IoU >= 0.7 with the packaged model (the validation mean is in docs/training.md)."""
    assert WEIGHTS.is_file(), f"packaged weights missing: {WEIGHTS}"
    from PIL import Image

    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.train.data import load_split, read_dsb2018_index
    from napari_sam.train.prompts import center_point
    from napari_sam.weights import load_model

    root = shared_data / "dsb2018"
    rows = {r["id"]: r for r in read_dsb2018_index(root)}
    model = load_model(WEIGHTS, device="cpu")
    assert model.arch == "nano"
    pred = SamPredictor(model, device="cpu")
    vid = next(i for i in sorted(load_split(root)["val"])
               if rows[i]["modality"] == "fluorescence" and rows[i]["height"] == "256")
    img = np.array(Image.open(root / "images" / f"{vid}.png"))
    lab = np.array(Image.open(root / "labels" / f"{vid}.png"))
    pred.set_image(img)
    ious = []
    for i in np.unique(lab[lab > 0])[:8]:
        gt = lab == i
        x, y = center_point(gt)  # (x, y) = (col, row)
        masks, scores, _ = pred.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
        m = masks[int(np.argmax(scores))]
        ious.append((m & gt).sum() / (m | gt).sum())
    assert np.median(ious) >= 0.7, f"IoUs {np.round(ious, 2)} on {vid}"
