"""Which memories a frame attends to, and the memory attention on them (SAM 2, inference only).

For a frame ``t`` tracked forward (backward: mirror every ``t - k`` below to ``t + k``):

- spatial memories: every conditioning frame (prompted frames; at most ``max_cond_frames_in_attn``,
  the temporally closest) with temporal position 0, and the ``num_maskmem - 1`` frames before ``t``
  (``t - 1`` and, with a temporal stride ``r``, every ``r``-th frame before it) with positions
  ``num_maskmem - 1 ... 1``;
- object pointers: those of the conditioning frames (only the ones at or before ``t`` with
  ``only_obj_ptrs_in_the_past_for_eval``) and of the ``max_obj_ptrs_in_encoder - 1`` frames before
  ``t``, with a 1-D sine encoding of their (signed) distance.

A frame prompted before it was tracked (an initial conditioning frame) attends to nothing: the
no-memory embedding is added to its features. Numbers as Meta's
``SAM2Base._prepare_memory_conditioned_features``.
"""

from __future__ import annotations

from typing import Any

import torch

from napari_sam.models.sam2.position_encoding import get_1d_sine_pe

__all__ = ["memory_frame_indices", "prepare_memory_conditioned_features", "select_closest_cond_frames"]


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: dict[int, Any], max_cond_frame_num: int
) -> tuple[dict[int, Any], dict[int, Any]]:
    """Split the conditioning frames into at most ``max_cond_frame_num`` (-1: all) selected ones
    (the closest before ``frame_idx``, the closest at or after it, then the temporally closest) and
    the rest."""
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return cond_frame_outputs, {}
    if max_cond_frame_num < 2:
        raise ValueError("max_cond_frames_in_attn must be -1 or at least 2")
    selected: dict[int, Any] = {}
    before = max((t for t in cond_frame_outputs if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond_frame_outputs[before]
    after = min((t for t in cond_frame_outputs if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond_frame_outputs[after]
    rest = sorted((t for t in cond_frame_outputs if t not in selected), key=lambda t: abs(t - frame_idx))
    selected.update((t, cond_frame_outputs[t]) for t in rest[: max_cond_frame_num - len(selected)])
    unselected = {t: v for t, v in cond_frame_outputs.items() if t not in selected}
    return selected, unselected


def memory_frame_indices(model: Any, frame_idx: int, track_in_reverse: bool = False) -> list[tuple[int, int]]:
    """``[(t_pos, frame), ...]``: the non-conditioning frames whose spatial memory frame ``frame_idx``
    reads, with their temporal positions ``1 .. num_maskmem - 1`` (the nearest has the highest)."""
    stride = model.memory_temporal_stride_for_eval
    out = []
    for t_pos in range(1, model.num_maskmem):
        t_rel = model.num_maskmem - t_pos  # frames back
        if t_rel == 1:
            prev = frame_idx + 1 if track_in_reverse else frame_idx - 1
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out.append((t_pos, prev))
    return out


def _object_pointer_tokens(
    model: Any,
    frame_idx: int,
    selected_cond: dict[int, dict],
    unselected_cond: dict[int, dict],
    non_cond: dict[int, dict],
    num_frames: int,
    track_in_reverse: bool,
    batch: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Object pointers ``(N, B, mem_dim)`` (each ``C``-pointer split into ``C // mem_dim`` tokens) and
    their temporal encodings, or None when there are none."""
    c, mem_dim = model.hidden_dim, model.mem_dim
    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    cond = selected_cond
    if model.only_obj_ptrs_in_the_past_for_eval:
        cond = {
            t: o for t, o in selected_cond.items() if (t >= frame_idx if track_in_reverse else t <= frame_idx)
        }
    sign = -1 if track_in_reverse else 1
    pos_and_ptrs = [
        (
            (frame_idx - t) * sign if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t),
            o["obj_ptr"],
        )
        for t, o in cond.items()
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        o = non_cond.get(t, unselected_cond.get(t))
        if o is not None:
            pos_and_ptrs.append((t_diff, o["obj_ptr"]))
    if not pos_and_ptrs:
        return None
    pos_list, ptr_list = zip(*pos_and_ptrs, strict=True)
    obj_ptrs = torch.stack(ptr_list, dim=0)  # (N, B, C)
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = c if model.proj_tpos_enc_in_obj_ptrs else mem_dim
        obj_pos = torch.tensor(pos_list).to(device)
        obj_pos = get_1d_sine_pe(obj_pos / (max_ptrs - 1), dim=tpos_dim)
        obj_pos = model.obj_ptr_tpos_proj(obj_pos).unsqueeze(1).expand(-1, batch, mem_dim)
    else:
        obj_pos = obj_ptrs.new_zeros(len(pos_list), batch, mem_dim)
    if mem_dim < c:
        obj_ptrs = obj_ptrs.reshape(-1, batch, c // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        obj_pos = obj_pos.repeat_interleave(c // mem_dim, dim=0)
    return obj_ptrs, obj_pos


def prepare_memory_conditioned_features(
    model: Any,
    frame_idx: int,
    is_init_cond_frame: bool,
    current_vision_feats: list[torch.Tensor],
    current_vision_pos_embeds: list[torch.Tensor],
    feat_sizes: list[tuple[int, int]],
    output_dict: dict[str, dict[int, dict]],
    num_frames: int,
    track_in_reverse: bool = False,
) -> torch.Tensor:
    """The frame's top-level features ``(HW, B, C)`` after memory attention, as ``(B, C, H, W)``.

    ``output_dict`` holds the outputs of earlier frames (``"cond_frame_outputs"``,
    ``"non_cond_frame_outputs"``: ``{t: {"maskmem_features" (B, mem_dim, H, W),
    "maskmem_pos_enc" [.., (B, mem_dim, H, W)], "obj_ptr" (B, C)}}``); missing frames are skipped.
    """
    feats = current_vision_feats[-1]
    b, c = feats.size(1), model.hidden_dim
    h, w = feat_sizes[-1]
    device = feats.device
    if model.num_maskmem == 0:  # SAM on images: no memory
        return feats.permute(1, 2, 0).reshape(b, c, h, w)
    num_obj_ptr_tokens = 0
    if is_init_cond_frame:
        if model.directly_add_no_mem_embed:
            return (feats + model.no_mem_embed).permute(1, 2, 0).reshape(b, c, h, w)
        memory = model.no_mem_embed.expand(1, b, model.mem_dim)
        memory_pos = model.no_mem_pos_enc.expand(1, b, model.mem_dim)
    else:
        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise ValueError(f"frame {frame_idx} is tracked but no frame is prompted")
        selected, unselected = select_closest_cond_frames(
            frame_idx, cond_outputs, model.max_cond_frames_in_attn
        )
        non_cond = output_dict["non_cond_frame_outputs"]
        t_pos_and_prevs = [(0, o) for o in selected.values()]
        for t_pos, prev in memory_frame_indices(model, frame_idx, track_in_reverse):
            t_pos_and_prevs.append((t_pos, non_cond.get(prev, unselected.get(prev))))
        mems, mem_pos = [], []
        for t_pos, prev in t_pos_and_prevs:
            if prev is None:
                continue
            # (kept in bfloat16; as float, as torch.cat would promote it next to the pointers)
            mems.append(prev["maskmem_features"].to(device, feats.dtype).flatten(2).permute(2, 0, 1))
            enc = prev["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            mem_pos.append(enc + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1])
        if model.use_obj_ptrs_in_encoder:
            ptrs = _object_pointer_tokens(
                model, frame_idx, selected, unselected, non_cond, num_frames, track_in_reverse, b, device
            )
            if ptrs is not None:
                mems.append(ptrs[0])
                mem_pos.append(ptrs[1])
                num_obj_ptr_tokens = ptrs[0].shape[0]
        memory, memory_pos = torch.cat(mems, dim=0), torch.cat(mem_pos, dim=0)
    out = model.memory_attention(
        curr=current_vision_feats,
        curr_pos=current_vision_pos_embeds,
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=num_obj_ptr_tokens,
    )
    return out.permute(1, 2, 0).reshape(b, c, h, w)
