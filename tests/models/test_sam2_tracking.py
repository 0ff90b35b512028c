"""SAM 2's tracking step (napari_sam.models.sam2.tracking) against Meta's SAM2Base.track_step: the same
model object (Meta's SAM 2.1 tiny, random weights), the same inputs."""

from __future__ import annotations

import pytest
import torch
from _sam2_reference import build_reference

from napari_sam.models.sam2 import tracking
from napari_sam.models.sam2.conditioning import select_closest_cond_frames

pytestmark = pytest.mark.slow
KEYS = ("pred_masks", "pred_masks_high_res", "obj_ptr", "object_score_logits", "maskmem_features")


@pytest.fixture(scope="module")
def setup():
    model = build_reference("sam2.1_hiera_tiny", seed=3, video=True)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        img = torch.randn(1, 3, model.image_size, model.image_size, generator=g)
        _, feats, pos, sizes = model._prepare_backbone_features(model.forward_image(img))
    return model, feats, pos, sizes


def _both(model, **kw):
    with torch.inference_mode():
        ours = tracking.track_step(model, **kw)
        ref = model.track_step(**kw)
    return ours, ref


def _same(ours: dict, ref: dict, atol: float = 1e-4) -> None:
    for k in KEYS:
        if ref[k] is None:
            assert ours[k] is None, k
            continue
        torch.testing.assert_close(ours[k].float(), ref[k].float(), atol=atol, rtol=1e-4, msg=k)
    if ref["maskmem_pos_enc"] is not None:
        torch.testing.assert_close(ours["maskmem_pos_enc"][-1], ref["maskmem_pos_enc"][-1])


def _points(model, xy, labels):
    return {
        "point_coords": torch.tensor([xy], dtype=torch.float32),
        "point_labels": torch.tensor([labels], dtype=torch.int32),
    }


def _kw(feats, pos, sizes, **kw):
    base = dict(
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=None,
        mask_inputs=None,
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=10,
    )
    base.update(kw)
    return base


def test_conditioning_frame_points_and_mask(setup):
    model, feats, pos, sizes = setup
    pts = _points(model, [[300.0, 410.0]], [1])
    ours, ref = _both(model, **_kw(feats, pos, sizes, frame_idx=2, is_init_cond_frame=True, point_inputs=pts))
    _same(ours, ref)
    box = _points(model, [[100.0, 120.0], [500.0, 640.0], [320.0, 300.0]], [2, 3, 0])
    ours, ref = _both(
        model,
        **_kw(
            feats, pos, sizes, frame_idx=2, is_init_cond_frame=True, point_inputs=box, run_mem_encoder=False
        ),
    )
    _same(ours, ref)
    mask = torch.zeros(1, 1, model.image_size, model.image_size)
    mask[..., 200:500, 300:700] = 1
    ours, ref = _both(model, **_kw(feats, pos, sizes, frame_idx=0, is_init_cond_frame=True, mask_inputs=mask))
    _same(ours, ref)
    ours, ref = _both(
        model, **_kw(feats, pos, sizes, frame_idx=0, is_init_cond_frame=True, mask_inputs=mask * 0)
    )
    _same(ours, ref)  # an empty mask: the object is absent


@pytest.mark.parametrize("reverse", [False, True])
def test_non_conditioning_frames_with_memory(setup, reverse):
    model, feats, pos, sizes = setup
    out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    pts = _points(model, [[300.0, 410.0], [500.0, 200.0]], [1, 0])
    start = 5
    kw = _kw(feats, pos, sizes, output_dict=out)
    with torch.inference_mode():
        out["cond_frame_outputs"][start] = model.track_step(
            **{**kw, "frame_idx": start, "is_init_cond_frame": True, "point_inputs": pts}
        )
    step = -1 if reverse else 1
    for k in range(1, 4):  # memory grows: cond frame, then 1, 2 previous frames
        t = start + step * k
        ours, ref = _both(
            model, **{**kw, "frame_idx": t, "is_init_cond_frame": False, "track_in_reverse": reverse}
        )
        _same(ours, ref)
        out["non_cond_frame_outputs"][t] = ref
    # a correction click on a tracked frame, with the earlier logits
    t = start + step * 2
    prev = torch.clamp(out["non_cond_frame_outputs"][t]["pred_masks"], -32.0, 32.0)
    ours, ref = _both(
        model,
        **{
            **kw,
            "frame_idx": t,
            "is_init_cond_frame": False,
            "track_in_reverse": reverse,
            "point_inputs": _points(model, [[400.0, 400.0]], [1]),
            "prev_sam_mask_logits": prev,
        },
    )
    _same(ours, ref)


def test_select_closest_cond_frames():
    cond = {t: t for t in (0, 3, 8, 12, 20)}
    sel, rest = select_closest_cond_frames(10, cond, 3)
    assert sorted(sel) == [8, 12, 3] or sorted(sel) == [3, 8, 12]
    assert sorted(rest) == [0, 20]
    assert select_closest_cond_frames(10, cond, -1) == (cond, {})
