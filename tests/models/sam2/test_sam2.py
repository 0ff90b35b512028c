"""The Sam2 container against Meta's SAM2Base (``../shared/reference/sam2``): built from Meta's
image encoder and memory modules it loads Meta's whole SAM 2.1 state dict strictly, keeps Meta's
settings, embeds an image as ``SAM2ImagePredictor.set_image`` does, and predicts from prompts as
``SAM2ImagePredictor.predict`` does; plus the registry (names, recognition, errors)."""

from __future__ import annotations

import copy

import _sam2_reference as ref
import numpy as np
import pytest
import torch

from napari_sam.models.sam import Preprocessing, Sam, available_archs, infer_arch
from napari_sam.models.sam2.sam2 import SAM2_PREPROCESSING, SAM21_CONFIGS, Sam2

ARCH = "sam2.1_hiera_tiny"
ORIG_HW = (600, 800)  # the "original image": prompts are given in its pixels


@pytest.fixture(scope="module")
def meta():
    return ref.build_reference(ARCH, seed=0)


@pytest.fixture(scope="module")
def ours(meta):
    parts = [copy.deepcopy(m) for m in (meta.image_encoder, meta.memory_attention, meta.memory_encoder)]
    model = Sam2(*parts, **SAM21_CONFIGS[ARCH].model_kwargs(), arch=ARCH)
    result = model.load_state_dict(meta.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A normalised ``(1, 3, 1024, 1024)`` input (a smooth random image in 0-255, preprocessed)."""
    g = torch.Generator().manual_seed(4)
    low = torch.rand(1, 3, 32, 32, generator=g) * 255
    return torch.nn.functional.interpolate(low, size=(1024, 1024), mode="bilinear")


class _GivenInput:
    """SAM2Transforms that hands ``set_image`` a fixed encoder input (everything else its own)."""

    def __init__(self, transforms, x: torch.Tensor) -> None:
        self._inner, self._x = transforms, x

    def __call__(self, image):
        return self._x

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def predictor(meta, ours, image):
    ref.sam2_package()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(meta)
    pred._transforms = _GivenInput(pred._transforms, ours.preprocess(image)[0])
    pred.set_image(np.zeros((*ORIG_HW, 3), np.uint8))  # only its size is read
    return pred


@pytest.fixture(scope="module")
def embedded(ours, image):
    with torch.no_grad():
        return ours.embed(ours.preprocess(image))


# --------------------------------------------------------------------------- the container


def test_meta_state_dict_loads_strictly_with_the_same_keys(meta, ours) -> None:
    assert list(ours.state_dict()) == list(meta.state_dict())
    for k, v in meta.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert not any(k.startswith(("prompt_encoder.", "mask_decoder.", "pixel_")) for k in ours.state_dict())


def test_keeps_every_setting_of_sam2base(meta, ours) -> None:
    settings = {k: v for k, v in vars(meta).items()
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, dict, type(None)))}
    assert len(settings) > 30
    # Meta's video builder's setting, ours for images and stacks alike (only the tracking step reads it)
    assert settings.pop("binarize_mask_from_pts_for_mem_enc") is False and ours.binarize_mask_from_pts_for_mem_enc
    for name, value in settings.items():
        assert getattr(ours, name) == value, name
    decoder_settings = {k: v for k, v in vars(meta.sam_mask_decoder).items()
                        if not k.startswith("_") and isinstance(v, (bool, int, float))}
    for name, value in decoder_settings.items():
        assert getattr(ours.sam_mask_decoder, name) == value, name
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability  # Meta's builder override


def test_interface_of_sam(ours) -> None:
    assert ours.prompt_encoder is ours.sam_prompt_encoder and ours.mask_decoder is ours.sam_mask_decoder
    assert "prompt_encoder" not in dict(ours.named_children()) and "mask_decoder" not in dict(ours.named_children())
    assert ours.img_size == 1024 and ours.embedding_size == (64, 64) and ours.arch == ARCH
    assert ours.mask_threshold == 0.0 and ours.image_format == "RGB" and ours.device == torch.device("cpu")
    assert ours.preprocessing == SAM2_PREPROCESSING and ours.preprocessing.resize == "square"
    x = torch.full((2, 3, 8, 8), 255.0)
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(ours.preprocess(x), expected.expand(2, 3, 8, 8))
    with pytest.raises(NotImplementedError):
        ours(x)


def test_forward_image_and_backbone_features_match_meta(meta, ours, image) -> None:
    x = ours.preprocess(image)
    with torch.no_grad():
        out_m, out_o = meta.forward_image(x), ours.forward_image(x)
        prep_m, prep_o = meta._prepare_backbone_features(out_m), ours._prepare_backbone_features(out_o)
    for a, b in zip(out_o["backbone_fpn"] + out_o["vision_pos_enc"], out_m["backbone_fpn"] + out_m["vision_pos_enc"],
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert prep_o[3] == prep_m[3] == [(256, 256), (128, 128), (64, 64)]
    for a, b in zip(prep_o[1] + prep_o[2], prep_m[1] + prep_m[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert out_o["backbone_fpn"][0].shape == (1, 32, 256, 256)  # conv_s0 applied
    assert out_o["backbone_fpn"][1].shape == (1, 64, 128, 128)  # conv_s1 applied


def test_embed_equals_the_image_predictors_features(predictor, embedded) -> None:
    image_embed, high_res = embedded
    assert image_embed.shape == (1, 256, 64, 64)
    assert [tuple(f.shape) for f in high_res] == [(1, 32, 256, 256), (1, 64, 128, 128)]
    torch.testing.assert_close(image_embed, predictor._features["image_embed"], atol=1e-5, rtol=1e-5)
    for a, b in zip(high_res, predictor._features["high_res_feats"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- prediction, as SamPredictor will do it


def _predict(model: Sam2, embedded, point_coords=None, point_labels=None, box=None, mask_input=None,
             multimask_output=True):
    """SAM2ImagePredictor.predict's steps on our modules: prompts from original-image pixels to
    the 1024 square (x * 1024 / W, y * 1024 / H: no +0.5, the prompt encoder adds it), a box as two
    points labelled 2 and 3 put before the points, the decoder with the high-res features and
    ``repeat_image`` for several prompts, low-res logits clamped to [-32, 32]."""
    h, w = ORIG_HW
    scale = torch.tensor([model.img_size / w, model.img_size / h])
    points = None
    if point_coords is not None:
        coords = torch.as_tensor(point_coords, dtype=torch.float32) * scale
        labels = torch.as_tensor(point_labels, dtype=torch.int32)
        points = (coords[None], labels[None]) if coords.ndim == 2 else (coords, labels)
    if box is not None:
        corners = torch.as_tensor(box, dtype=torch.float32).reshape(-1, 2, 2) * scale
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int32).repeat(corners.shape[0], 1)
        points = (corners, corner_labels) if points is None else (
            torch.cat([corners, points[0]], 1), torch.cat([corner_labels, points[1]], 1))
    masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32).reshape(-1, 1, 256, 256)
    image_embed, high_res = embedded
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=masks)
        low_res, iou, _, _ = model.mask_decoder(
            image_embeddings=image_embed,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1,
            high_res_features=list(high_res),
        )
    return low_res.clamp(-32.0, 32.0).squeeze(0).numpy(), iou.squeeze(0).numpy()


PROMPTS = {
    "point": dict(point_coords=[[420.0, 310.0]], point_labels=[1]),
    "points": dict(point_coords=[[420.0, 310.0], [100.5, 90.0], [700.0, 500.0]], point_labels=[1, 0, 1]),
    "box": dict(box=[[150.0, 120.0, 610.0, 480.0]]),
    "box+points": dict(box=[[150.0, 120.0, 610.0, 480.0]], point_coords=[[420.0, 310.0], [200.0, 150.0]],
                       point_labels=[1, 0]),
    "boxes": dict(box=[[150.0, 120.0, 610.0, 480.0], [10.0, 20.0, 300.0, 280.0]]),
    "point+mask": dict(point_coords=[[420.0, 310.0]], point_labels=[1], mask_input="previous"),
    "mask": dict(mask_input="previous"),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_prediction_equals_the_image_predictor(predictor, ours, embedded, kind, multimask) -> None:
    prompt = dict(PROMPTS[kind])
    if prompt.get("mask_input") == "previous":  # the best low-res mask of a previous click
        logits = predictor.predict(**PROMPTS["points"], multimask_output=False, return_logits=True)[2]
        prompt["mask_input"] = logits
    _, iou_m, low_m = predictor.predict(**prompt, multimask_output=multimask, return_logits=True)
    low_o, iou_o = _predict(ours, embedded, **prompt, multimask_output=multimask)
    assert low_o.shape == low_m.shape and iou_o.shape == iou_m.shape
    np.testing.assert_allclose(low_o, low_m, atol=1e-4, rtol=0)
    np.testing.assert_allclose(iou_o, iou_m, atol=1e-4, rtol=0)
    assert np.abs(low_o).max() <= 32


# --------------------------------------------------------------------------- registry


def _fake_state_dict(width: int, blocks: int) -> dict[str, torch.Tensor]:
    sd = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 7, 7)}
    sd.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
    sd["image_encoder.neck.convs.0.conv.weight"] = torch.zeros(1)
    return sd


def test_registered_and_recognised(meta) -> None:
    assert set(SAM21_CONFIGS) <= set(available_archs())
    assert infer_arch(meta.state_dict()) == ARCH
    for arch, config in SAM21_CONFIGS.items():
        assert infer_arch(_fake_state_dict(config.trunk_embed_dim, sum(config.trunk_stages))) == arch
    with pytest.raises(ValueError, match=r"Hiera trunk patch embedding \(128, 3, 7, 7\) with 12 blocks"):
        infer_arch(_fake_state_dict(128, 12))


def test_config_is_sam21s() -> None:
    kwargs = SAM21_CONFIGS[ARCH].model_kwargs()
    assert kwargs["sam_mask_decoder_extra_args"] == {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    assert not any(k.startswith("trunk_") for k in kwargs)
    assert all(c.model_kwargs() == kwargs for c in SAM21_CONFIGS.values())  # the same for every size
    with pytest.raises(Exception):  # noqa: B017 (frozen)
        SAM21_CONFIGS[ARCH].num_maskmem = 3


@pytest.mark.parametrize("arch", list(SAM21_CONFIGS))
def test_config_equals_metas_yaml(arch) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    if not ref.available():
        pytest.skip("Meta's SAM 2 reference is absent")
    cfg = omegaconf.OmegaConf.load(ref.REFERENCE_DIR / "sam2" / ref.CONFIGS[arch]).model
    config = SAM21_CONFIGS[arch]
    trunk = cfg.image_encoder.trunk
    assert config.trunk_embed_dim == trunk.embed_dim
    assert config.trunk_stages == tuple(trunk.get("stages", (2, 3, 16, 3)))  # Hiera's default
    yaml_values = {k: v for k, v in cfg.items() if not isinstance(v, omegaconf.DictConfig) and k != "_target_"}
    kwargs = config.model_kwargs()
    assert {k: kwargs[k] for k in yaml_values} == yaml_values


def test_builds_from_the_registry() -> None:
    pytest.importorskip("napari_sam.models.sam2.image_encoder", reason="the Hiera image encoder has not landed")
    pytest.importorskip("napari_sam.models.sam2.memory_attention", reason="the memory attention has not landed")
    pytest.importorskip("napari_sam.models.sam2.memory_encoder", reason="the memory encoder has not landed")
    from napari_sam.models.sam import build_model

    model = build_model(ARCH)
    assert isinstance(model, Sam2) and model.arch == ARCH and not model.training
    assert infer_arch(model.state_dict()) == ARCH


# --------------------------------------------------------------------------- SAM 1's side


def test_square_resize_is_a_preprocessing_mode_and_sam_embeds_as_sam2() -> None:
    from _synthetic import make_tiny_sam

    assert Preprocessing(resize="square").resize == "square"
    with pytest.raises(ValueError, match="'square'"):
        Preprocessing(resize="nearest")
    sam: Sam = make_tiny_sam()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        embedding, high_res = sam.embed(x)
        torch.testing.assert_close(embedding, sam.image_encoder(x))
    assert high_res is None
