"""SAM 2's tracking step (inference only), as functions of a ``SAM2Base``-shaped model.

``track_step`` segments one object (or a batch of objects sharing a frame) on one frame:

1. on a frame with a mask prompt (and ``use_mask_input_as_output_without_sam``), the mask is the
   output (:func:`use_mask_as_output`; the decoder only makes the object pointer);
2. otherwise the frame's top-level features are conditioned on the memory bank
   (:func:`~napari_sam.models.sam2.conditioning.prepare_memory_conditioned_features`) and SAM's
   prompt encoder and mask decoder run on them (:func:`forward_sam_heads`);
3. the memory encoder turns the frame and its predicted mask into a new memory
   (:func:`encode_new_memory`), unless ``run_mem_encoder=False``.

The numbers are those of Meta's ``sam2/modeling/sam2_base.py`` (``_forward_sam_heads``,
``_use_mask_as_output``, ``_encode_new_memory``, ``track_step``); its training-only branches are left
out. ``model`` is anything with SAM2Base's attributes: ``sam_prompt_encoder``, ``sam_mask_decoder``,
``memory_encoder``, ``memory_attention``, ``obj_ptr_proj``, ``mask_downsample``, ``no_obj_ptr``,
``no_obj_embed_spatial``, ``maskmem_tpos_enc``, ``no_mem_embed`` ... and its config attributes
(``image_size``, ``hidden_dim``, ``num_maskmem``, ``pred_obj_scores`` ...).

Shapes: ``B`` objects, ``C = hidden_dim`` (256), ``H = W = image_size // 16`` (64); vision features
are flattened ``(HW, B, C)`` per level, as ``_prepare_backbone_features`` makes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from napari_sam.models.sam2.conditioning import prepare_memory_conditioned_features

__all__ = [
    "NO_OBJ_SCORE",
    "SamHeadOutputs",
    "encode_new_memory",
    "forward_sam_heads",
    "track_step",
    "use_mask_as_output",
    "use_multimask",
]

#: the mask logit of an object that is not on the frame
NO_OBJ_SCORE = -1024.0


class SamHeadOutputs(NamedTuple):
    """What the SAM heads give for ``B`` objects (``M`` = 3 masks with multimask output, else 1)."""

    low_res_multimasks: torch.Tensor  # (B, M, 4H, 4W) logits
    high_res_multimasks: torch.Tensor  # (B, M, image_size, image_size) logits
    ious: torch.Tensor  # (B, M) predicted IoU
    low_res_masks: torch.Tensor  # (B, 1, 4H, 4W): the best of the M
    high_res_masks: torch.Tensor  # (B, 1, image_size, image_size)
    obj_ptr: torch.Tensor  # (B, C) object pointer
    object_score_logits: torch.Tensor  # (B, 1): > 0 means the object is on the frame


def _to_bchw(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(HW, B, C)`` -> ``(B, C, H, W)``."""
    return x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *size)


def use_multimask(model: Any, is_init_cond_frame: bool, point_inputs: dict | None) -> bool:
    """Whether the decoder gives 3 masks: SAM 2 does so for 0 or 1 clicks (a box counts as two),
    on initial conditioning frames and, with ``multimask_output_for_tracking``, on every frame."""
    num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
    return bool(
        model.multimask_output_in_sam
        and (is_init_cond_frame or model.multimask_output_for_tracking)
        and model.multimask_min_pt_num <= num_pts <= model.multimask_max_pt_num
    )


def _object_pointer(
    model: Any, obj_ptr: torch.Tensor, object_score_logits: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """Mix the no-object pointer into ``obj_ptr (B, C)`` by ``1 - lam (B, 1)`` (lam: object present)."""
    if not model.pred_obj_scores:
        return obj_ptr
    if model.fixed_no_obj_ptr:
        obj_ptr = lam * obj_ptr
    return obj_ptr + (1 - lam) * model.no_obj_ptr


def forward_sam_heads(
    model: Any,
    backbone_features: torch.Tensor,
    point_inputs: dict | None = None,
    mask_inputs: torch.Tensor | None = None,
    high_res_features: list[torch.Tensor] | None = None,
    multimask_output: bool = False,
) -> SamHeadOutputs:
    """SAM's prompt encoder and mask decoder on (memory-conditioned) features.

    Args:
        backbone_features: ``(B, C, H, W)``.
        point_inputs: ``{"point_coords": (B, P, 2) xy in pixels of the image_size square,
            "point_labels": (B, P) int32}`` (1 positive, 0 negative, 2/3 box corners, -1 padding).
        mask_inputs: ``(B, 1, h, w)`` mask logits, resized (antialiased) to the prompt encoder's
            mask input size when needed.
        high_res_features: ``[(B, C/8, 4H, 4W), (B, C/4, 2H, 2W)]`` or None.
        multimask_output: 3 masks, the best by predicted IoU picked as the output.
    """
    b, device = backbone_features.size(0), backbone_features.device
    if point_inputs is not None:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    else:  # an empty padding point
        coords = torch.zeros(b, 1, 2, device=device)
        labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
    mask_prompt = None
    if mask_inputs is not None:
        mask_prompt = mask_inputs
        if mask_inputs.shape[-2:] != model.sam_prompt_encoder.mask_input_size:
            mask_prompt = F.interpolate(
                mask_inputs.float(),
                size=model.sam_prompt_encoder.mask_input_size,
                align_corners=False,
                mode="bilinear",
                antialias=True,
            )
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
    low_res_multimasks, ious, sam_output_tokens, object_score_logits = model.sam_mask_decoder(
        image_embeddings=backbone_features,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        repeat_image=False,
        high_res_features=high_res_features,
    )
    if model.pred_obj_scores:  # a hard choice: an absent object has no mask at all
        is_obj_appearing = object_score_logits > 0
        low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
    low_res_multimasks = low_res_multimasks.float()
    high_res_multimasks = F.interpolate(
        low_res_multimasks, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )
    sam_output_token = sam_output_tokens[:, 0]
    if multimask_output:
        best = torch.argmax(ious, dim=-1)
        rows = torch.arange(b, device=device)
        low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
        high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
        if sam_output_tokens.size(1) > 1:
            sam_output_token = sam_output_tokens[rows, best]
    else:
        low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
    obj_ptr = model.obj_ptr_proj(sam_output_token)
    if model.pred_obj_scores:
        present = object_score_logits > 0
        lam = object_score_logits.sigmoid() if model.soft_no_obj_ptr else present.float()
        obj_ptr = _object_pointer(model, obj_ptr, object_score_logits, lam)
    return SamHeadOutputs(
        low_res_multimasks,
        high_res_multimasks,
        ious,
        low_res_masks,
        high_res_masks,
        obj_ptr,
        object_score_logits,
    )


def use_mask_as_output(
    model: Any,
    backbone_features: torch.Tensor,
    high_res_features: list[torch.Tensor] | None,
    mask_inputs: torch.Tensor,
) -> SamHeadOutputs:
    """A binary ``mask_inputs (B, 1, image_size, image_size)`` as the output (logits -10/+10, IoU 1),
    the object pointer from the decoder run on the downsampled mask, the object score from whether
    the mask has any pixel."""
    out_scale, out_bias = 20.0, -10.0
    mask_float = mask_inputs.float()
    high_res_masks = mask_float * out_scale + out_bias
    low_res_masks = F.interpolate(
        high_res_masks,
        size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
        align_corners=False,
        mode="bilinear",
        antialias=True,
    )
    ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
    if not model.use_obj_ptrs_in_encoder:
        obj_ptr = torch.zeros(mask_inputs.size(0), model.hidden_dim, device=mask_inputs.device)
    else:
        obj_ptr = forward_sam_heads(
            model,
            backbone_features,
            mask_inputs=model.mask_downsample(mask_float),
            high_res_features=high_res_features,
        ).obj_ptr
    lam = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None].float()
    object_score_logits = out_scale * lam + out_bias
    obj_ptr = _object_pointer(model, obj_ptr, object_score_logits, lam)
    return SamHeadOutputs(
        low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
    )


def encode_new_memory(
    model: Any,
    current_vision_feats: list[torch.Tensor],
    feat_sizes: list[tuple[int, int]],
    pred_masks_high_res: torch.Tensor,
    object_score_logits: torch.Tensor,
    is_mask_from_pts: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The memory of a frame: its top-level features fused with its mask.

    Args:
        current_vision_feats: per level ``(HW, B, C)``; the last (top) level is used.
        pred_masks_high_res: ``(B, 1, image_size, image_size)`` logits.
        object_score_logits: ``(B, 1)``; absent objects get the no-object spatial embedding.
        is_mask_from_pts: a mask the user made with clicks (binarised with
            ``binarize_mask_from_pts_for_mem_enc``, so memory holds what the user saw).

    Returns:
        ``maskmem_features (B, mem_dim, H, W)`` and ``maskmem_pos_enc`` (a list with one
        ``(B, mem_dim, H, W)``).
    """
    pix_feat = _to_bchw(current_vision_feats[-1], feat_sizes[-1])
    if model.non_overlap_masks_for_mem_enc:
        pred_masks_high_res = apply_non_overlapping_constraints(pred_masks_high_res)
    if model.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
        mask_for_mem = (pred_masks_high_res > 0).float()
    else:
        mask_for_mem = torch.sigmoid(pred_masks_high_res)
    if model.sigmoid_scale_for_mem_enc != 1.0:
        mask_for_mem = mask_for_mem * model.sigmoid_scale_for_mem_enc
    if model.sigmoid_bias_for_mem_enc != 0.0:
        mask_for_mem = mask_for_mem + model.sigmoid_bias_for_mem_enc
    out = model.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
    maskmem_features, maskmem_pos_enc = out["vision_features"], out["vision_pos_enc"]
    if model.no_obj_embed_spatial is not None:
        absent = 1 - (object_score_logits > 0).float()
        maskmem_features = maskmem_features + absent[..., None, None] * model.no_obj_embed_spatial[
            ..., None, None
        ].expand(*maskmem_features.shape)
    return maskmem_features, maskmem_pos_enc


def apply_non_overlapping_constraints(pred_masks: torch.Tensor) -> torch.Tensor:
    """``(B, 1, h, w)`` logits of B objects: where an object is not the highest, its logits are
    clamped to at most -10 (so masks do not overlap)."""
    if pred_masks.size(0) == 1:
        return pred_masks
    top = torch.argmax(pred_masks, dim=0, keepdim=True)
    idx = torch.arange(pred_masks.size(0), device=pred_masks.device)[:, None, None, None]
    return torch.where(top == idx, pred_masks, torch.clamp(pred_masks, max=-10.0))


def track_step(
    model: Any,
    frame_idx: int,
    is_init_cond_frame: bool,
    current_vision_feats: list[torch.Tensor],
    current_vision_pos_embeds: list[torch.Tensor],
    feat_sizes: list[tuple[int, int]],
    point_inputs: dict | None,
    mask_inputs: torch.Tensor | None,
    output_dict: dict[str, dict[int, dict]],
    num_frames: int,
    track_in_reverse: bool = False,
    run_mem_encoder: bool = True,
    prev_sam_mask_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One frame of tracking (Meta's ``SAM2Base.track_step``, inference only).

    Args:
        frame_idx: the frame (slice) index; ``num_frames``: how many there are.
        is_init_cond_frame: a frame prompted before it was tracked: segmented without memory.
        current_vision_feats, current_vision_pos_embeds: per level ``(HW, B, C)``;
            ``feat_sizes``: per level ``(H, W)``.
        point_inputs: see :func:`forward_sam_heads`; mask_inputs: ``(B, 1, image_size, image_size)``
            (not both).
        output_dict: the memory bank, ``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs":
            {t: out}}`` (``out`` as returned here).
        track_in_reverse: tracking towards lower frame indices.
        run_mem_encoder: encode the result into a memory (else its memory entries are None).
        prev_sam_mask_logits: ``(B, 1, 4H, 4W)`` earlier logits on this frame, given to the decoder
            with new clicks (a correction).

    Returns:
        ``{"point_inputs", "mask_inputs", "pred_masks" (B, 1, 4H, 4W), "pred_masks_high_res"
        (B, 1, image_size, image_size), "obj_ptr" (B, C), "object_score_logits" (B, 1), "ious"
        (B, 1) (the picked mask's predicted IoU), "maskmem_features" (B, mem_dim, H, W) or None,
        "maskmem_pos_enc" [(B, mem_dim, H, W)] or None}``.
    """
    current_out: dict[str, Any] = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
    high_res_features = None
    if len(current_vision_feats) > 1:
        high_res_features = [
            _to_bchw(x, s) for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1], strict=True)
        ]
    if mask_inputs is not None and model.use_mask_input_as_output_without_sam:
        pix_feat = _to_bchw(current_vision_feats[-1], feat_sizes[-1])
        sam_outputs = use_mask_as_output(model, pix_feat, high_res_features, mask_inputs)
    else:
        pix_feat = prepare_memory_conditioned_features(
            model,
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=current_vision_feats[-1:],
            current_vision_pos_embeds=current_vision_pos_embeds[-1:],
            feat_sizes=feat_sizes[-1:],
            output_dict=output_dict,
            num_frames=num_frames,
            track_in_reverse=track_in_reverse,
        )
        if prev_sam_mask_logits is not None:
            if point_inputs is None or mask_inputs is not None:
                raise ValueError("prev_sam_mask_logits go with new clicks and no mask input")
            mask_inputs = prev_sam_mask_logits
        sam_outputs = forward_sam_heads(
            model,
            pix_feat,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            high_res_features=high_res_features,
            multimask_output=use_multimask(model, is_init_cond_frame, point_inputs),
        )
    if sam_outputs.ious.size(-1) > 1:
        iou = sam_outputs.ious.max(dim=-1, keepdim=True).values
    else:
        iou = sam_outputs.ious
    current_out["pred_masks"] = sam_outputs.low_res_masks
    current_out["pred_masks_high_res"] = sam_outputs.high_res_masks
    current_out["obj_ptr"] = sam_outputs.obj_ptr
    current_out["object_score_logits"] = sam_outputs.object_score_logits
    current_out["ious"] = iou
    current_out["maskmem_features"] = current_out["maskmem_pos_enc"] = None
    if run_mem_encoder and model.num_maskmem > 0:
        current_out["maskmem_features"], current_out["maskmem_pos_enc"] = encode_new_memory(
            model,
            current_vision_feats,
            feat_sizes,
            sam_outputs.high_res_masks,
            sam_outputs.object_score_logits,
            is_mask_from_pts=point_inputs is not None,
        )
    return current_out
