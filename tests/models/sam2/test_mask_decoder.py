"""SAM 2's mask decoder and prompt encoder against Meta's (``../shared/reference/sam2``): the same
random weights, loaded strictly, give the same outputs."""

from __future__ import annotations

import _sam2_reference as ref
import pytest
import torch

from napari_sam.models.prompt_encoder import PromptEncoder
from napari_sam.models.sam2.mask_decoder import MaskDecoder, TwoWayTransformer

C, GRID = 256, 16  # a 16x16 grid keeps the test fast; the decoder does not depend on the grid size
SAM21 = dict(  # the SAM 2.1 decoder (SAM2Base._build_sam_heads with the 2.1 config and the builder's overrides)
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)


def _pair(**kwargs) -> tuple[torch.nn.Module, MaskDecoder]:
    ref.sam2_package()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as MetaMaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer as MetaTwoWayTransformer

    torch.manual_seed(0)
    meta = MetaMaskDecoder(
        transformer_dim=C,
        transformer=MetaTwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=2048, num_heads=8),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        **kwargs,
    )
    ref.randomize(meta, seed=1, std=0.05).eval()
    ours = MaskDecoder(
        transformer_dim=C,
        transformer=TwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=2048, num_heads=8),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        **kwargs,
    ).eval()
    result = ours.load_state_dict(meta.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(ours.state_dict()) == list(meta.state_dict())
    return meta, ours


def _inputs(n_images: int, n_prompts: int, n_points: int = 3, dense_mask: bool = False, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n_images, C, GRID, GRID, generator=g)
    pe = torch.randn(1, C, GRID, GRID, generator=g)
    sparse = torch.randn(n_prompts, n_points, C, generator=g)
    if dense_mask:
        dense = torch.randn(n_prompts, C, GRID, GRID, generator=g)
    else:  # the no-mask embedding expanded, as the prompt encoder gives it
        dense = torch.randn(1, C, 1, 1, generator=g).expand(n_prompts, -1, GRID, GRID)
    high_res = [torch.randn(n_images, C // 8, 4 * GRID, 4 * GRID, generator=g),
                torch.randn(n_images, C // 4, 2 * GRID, 2 * GRID, generator=g)]
    return image, pe, sparse, dense, high_res


def _run(decoder, image, pe, sparse, dense, high_res, multimask, repeat):
    with torch.no_grad():
        return decoder(
            image_embeddings=image,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=repeat,
            high_res_features=high_res,
        )


def _assert_same(a, b, atol=1e-4) -> None:
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def sam21():
    return _pair(**SAM21)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    ("n_images", "n_prompts", "repeat", "dense_mask"),
    [(1, 1, False, False), (1, 3, True, False), (1, 3, True, True), (3, 3, False, False), (3, 3, False, True)],
)
def test_sam21_decoder_matches_meta(sam21, multimask, n_images, n_prompts, repeat, dense_mask) -> None:
    meta, ours = sam21
    args = _inputs(n_images, n_prompts, dense_mask=dense_mask)
    out_meta, out_ours = _run(meta, *args, multimask, repeat), _run(ours, *args, multimask, repeat)
    _assert_same(out_ours, out_meta)
    masks, iou, tokens, obj = out_ours
    m = 3 if multimask else 1
    assert masks.shape == (n_prompts, m, 4 * GRID, 4 * GRID) and iou.shape == (n_prompts, m)
    assert tokens.shape == (n_prompts, m, C) and obj.shape == (n_prompts, 1)  # multimask tokens for the pointer
    assert torch.all((iou >= 0) & (iou <= 1))  # through the sigmoid


def test_high_res_features_of_one_image_serve_a_batch_of_prompts(sam21) -> None:
    """SAM2ImagePredictor passes batch-1 high-res features with several prompts (repeat_image)."""
    meta, ours = sam21
    image, pe, sparse, dense, high_res = _inputs(1, 4)
    _assert_same(_run(ours, image, pe, sparse, dense, high_res, True, True),
                 _run(meta, image, pe, sparse, dense, high_res, True, True))


def test_dynamic_multimask_falls_back_where_the_single_mask_is_unstable(sam21) -> None:
    meta, ours = sam21
    args = _inputs(1, 6, seed=5)
    with torch.no_grad():
        all_masks = ours.predict_masks(*args[:4], repeat_image=True, high_res_features=args[4])[0]
        scores = ours._get_stability_scores(all_masks[:, 0:1]).flatten()
    thresh = float(scores.median())  # about half the prompts are stable, half fall back
    try:
        for d in (meta, ours):
            d.dynamic_multimask_stability_thresh = thresh
        out_meta, out_ours = _run(meta, *args, False, True), _run(ours, *args, False, True)
    finally:
        for d in (meta, ours):
            d.dynamic_multimask_stability_thresh = SAM21["dynamic_multimask_stability_thresh"]
    _assert_same(out_ours, out_meta)
    stable = scores >= thresh
    assert 0 < int(stable.sum()) < len(stable)
    torch.testing.assert_close(out_ours[0][stable], all_masks[stable, 0:1])
    assert not torch.equal(out_ours[0][~stable], all_masks[~stable, 0:1])
    tokens = out_ours[2]
    assert tokens.shape == (6, 1, C)  # single-mask mode: the single-mask token


def test_dynamic_multimask_is_off_in_training(sam21) -> None:
    _, ours = sam21
    args = _inputs(1, 2)
    try:
        ours.train()
        with torch.no_grad():
            out = _run(ours, *args, False, True)
            all_masks = ours.predict_masks(*args[:4], repeat_image=True, high_res_features=args[4])[0]
    finally:
        ours.eval()
    torch.testing.assert_close(out[0], all_masks[:, 0:1])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pred_obj_scores": True}, {"pred_obj_scores": True, "pred_obj_scores_mlp": True, "use_high_res_features": True}],
    ids=["sam1-like", "linear-obj-head", "mlp-obj-head-high-res"],
)
@pytest.mark.parametrize("multimask", [True, False])
def test_other_configurations_match_meta(kwargs, multimask) -> None:
    meta, ours = _pair(**kwargs)
    image, pe, sparse, dense, high_res = _inputs(1, 2)
    high_res = high_res if kwargs.get("use_high_res_features") else None
    out_meta = _run(meta, image, pe, sparse, dense, high_res, multimask, True)
    out_ours = _run(ours, image, pe, sparse, dense, high_res, multimask, True)
    _assert_same(out_ours, out_meta)
    if not kwargs:
        assert torch.all(out_ours[3] == 10.0)
    assert out_ours[2].shape[1] == 1  # use_multimask_token_for_obj_ptr off: the single-mask token


def test_unbatched_image_needs_repeat_image(sam21) -> None:
    _, ours = sam21
    image, pe, sparse, dense, high_res = _inputs(1, 3)
    with pytest.raises(ValueError, match="repeat_image"):
        _run(ours, image, pe, sparse, dense, high_res, True, False)


# --------------------------------------------------------------------------- prompt encoder


@pytest.fixture(scope="module")
def prompt_encoders():
    """Meta's SAM 2 prompt encoder and ours (SAM 1's, which already embeds box corners 2/3 and -1
    padding as SAM 2's does) with the same weights, at SAM 2's sizes."""
    ref.sam2_package()
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as MetaPromptEncoder

    torch.manual_seed(0)
    kwargs = dict(embed_dim=C, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    meta = ref.randomize(MetaPromptEncoder(**kwargs), seed=3, std=0.1).eval()
    ours = PromptEncoder(**kwargs).eval()
    ours.load_state_dict(meta.state_dict(), strict=True)
    return meta, ours


def _prompts(kind: str, b: int = 2):
    g = torch.Generator().manual_seed(7)
    coords = torch.rand(b, 3, 2, generator=g) * 1024
    labels = torch.tensor([[1, 0, 1], [0, 1, -1]], dtype=torch.int32)[:b]
    box_pts = torch.rand(b, 2, 2, generator=g) * 1024
    box_labels = torch.tensor([[2, 3]], dtype=torch.int32).repeat(b, 1)
    mask = torch.randn(b, 1, 256, 256, generator=g)
    points, boxes, masks = None, None, None
    if "points" in kind:
        points = (coords, labels)
    if "corners" in kind:  # a box as two labelled points, first (SAM2ImagePredictor._predict)
        points = (box_pts, box_labels) if points is None else (
            torch.cat([box_pts, points[0]], 1), torch.cat([box_labels, points[1]], 1))
    if "boxes" in kind:
        boxes = box_pts.reshape(b, 4)
    if "mask" in kind:
        masks = mask
    return points, boxes, masks


@pytest.mark.parametrize(
    "kind",
    ["points", "corners", "corners+points", "boxes", "points+boxes", "mask", "points+mask", "corners+points+mask",
     "none"],
)
def test_prompt_encoder_matches_meta(prompt_encoders, kind) -> None:
    meta, ours = prompt_encoders
    points, boxes, masks = _prompts(kind)
    with torch.no_grad():
        sparse_m, dense_m = meta(points=points, boxes=boxes, masks=masks)
        sparse_o, dense_o = ours(points=points, boxes=boxes, masks=masks)
    assert sparse_o.shape == sparse_m.shape and dense_o.shape == dense_m.shape
    torch.testing.assert_close(sparse_o, sparse_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_o, dense_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.get_dense_pe(), meta.get_dense_pe(), atol=1e-5, rtol=1e-5)


def test_box_corners_as_points_equal_a_box(prompt_encoders) -> None:
    """A box given as points labelled 2 and 3 embeds as the box itself, less the padding point."""
    _, ours = prompt_encoders
    with torch.no_grad():
        as_box = ours(*_prompts("boxes"))[0]
        as_corners = ours(*_prompts("corners"))[0]
    torch.testing.assert_close(as_corners[:, :2], as_box)
