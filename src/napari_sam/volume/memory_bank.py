"""Per-object state of SAM 2 tracking through a stack: prompts, outputs and the memory bank.

One :class:`ObjectState` per object, as SAM2VideoPredictor keeps it per object: the prompts per
slice, the outputs of prompted slices (``cond``: conditioning; a correction on a tracked slice
is one too when corrections count as conditioning), of tracked slices (``non_cond``), those of
prompts not yet encoded into memory (``temp_*``), and which slices were tracked in which direction.

An output is ``{"maskmem_features" (1, mem_dim, h, w) bfloat16, "maskmem_pos_enc" [(1, mem_dim, h, w)],
"pred_masks" (1, 1, 4h, 4w) logits, "obj_ptr" (1, C), "object_score_logits" (1, 1), "iou" float}``
(about 0.8 MB at 1024 px). Tracked outputs a frame can no longer attend to are dropped
(:func:`memory_reach`, :meth:`ObjectState.prune`), so the bank stays flat however long the stack;
``object_scores`` (one float per tracked slice) is all that is kept of every slice.

Objects whose banks hold the same slices (:func:`bank_key`) read the same memory slots on a slice,
so they can be tracked there as one batch (:func:`stacked_bank`), as SAM2VideoPredictor did before
it went one object at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ObjectState", "bank_key", "memory_reach", "stacked_bank"]


def memory_reach(model: Any, n: int) -> int:
    """How far (in slices) a tracked frame reads others: its ``num_maskmem - 1`` spatial memories
    (``memory_temporal_stride_for_eval`` apart) and ``max_obj_ptrs_in_encoder - 1`` object pointers."""
    reach = (model.num_maskmem - 1) * max(1, int(model.memory_temporal_stride_for_eval))
    if model.use_obj_ptrs_in_encoder:
        reach = max(reach, min(n, model.max_obj_ptrs_in_encoder) - 1)
    return max(1, reach)


@dataclass
class ObjectState:
    """Prompts, outputs and tracking bookkeeping of one object (slice indices along the stack axis)."""

    oid: int
    points: dict[int, dict] = field(default_factory=dict)  # z -> {"point_coords", "point_labels"}
    masks: dict[int, Any] = field(default_factory=dict)  # z -> (1, 1, S, S) float mask input
    cond: dict[int, dict] = field(default_factory=dict)
    non_cond: dict[int, dict] = field(default_factory=dict)
    temp_cond: dict[int, dict] = field(default_factory=dict)
    temp_non_cond: dict[int, dict] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # z -> tracked in reverse
    object_scores: dict[int, float] = field(default_factory=dict)  # z -> object score logit

    @property
    def output_dict(self) -> dict[str, dict[int, dict]]:
        """The bank in Meta's layout (what ``track_step`` reads)."""
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.non_cond}

    def temp(self, is_cond: bool) -> dict[int, dict]:
        return self.temp_cond if is_cond else self.temp_non_cond

    def latest(self, z: int, is_cond: bool) -> dict | None:
        """The most recent output on slice ``z``: a pending prompt's, else the stored one."""
        out = self.temp(is_cond).get(z)
        if out is None:
            out = self.cond.get(z, self.non_cond.get(z))
        return out

    @property
    def prompted(self) -> list[int]:
        """Slices with prompts of this object (pending or encoded), ascending."""
        return sorted(set(self.points) | set(self.masks))

    def clear_slice(self, z: int) -> None:
        """Forget the prompts on slice ``z``; its output, if any, becomes an ordinary tracked one."""
        self.points.pop(z, None)
        self.masks.pop(z, None)
        self.temp_cond.pop(z, None)
        self.temp_non_cond.pop(z, None)
        out = self.cond.pop(z, None)
        if out is not None:
            self.non_cond[z] = out
            self.tracked.pop(z, None)

    def reset_tracking(self) -> None:
        for d in (self.points, self.masks, self.cond, self.non_cond, self.temp_cond, self.temp_non_cond):
            d.clear()
        self.tracked.clear()
        self.object_scores.clear()

    def prune(self, anchors: list[int], reach: int) -> int:
        """Drop the tracked outputs farther than ``reach`` from every anchor (the slice being tracked
        and the prompted slices, where later passes start); returns how many were dropped."""
        drop = [z for z in self.non_cond if all(abs(z - a) > reach for a in anchors)]
        for z in drop:
            del self.non_cond[z]
        return len(drop)

    @property
    def n_entries(self) -> int:
        """Outputs held (each with its memory features and logits)."""
        return len(self.cond) + len(self.non_cond) + len(self.temp_cond) + len(self.temp_non_cond)


def bank_key(obj: ObjectState) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The slices of ``obj``'s bank: objects with the same key select the same memories anywhere."""
    return tuple(sorted(obj.cond)), tuple(sorted(obj.non_cond))


def stacked_bank(objs: list[ObjectState]) -> dict[str, dict[int, dict]]:
    """The banks of ``objs`` (one :func:`bank_key`) as one bank of batch ``len(objs)``, in Meta's
    layout, with what ``track_step`` reads of it: memory features, their position encoding and the
    object pointers, each the objects' in order along the batch axis."""
    b = len(objs)

    def stack(outs: list[dict]) -> dict:
        return {
            "maskmem_features": torch.cat([o["maskmem_features"] for o in outs]),
            "maskmem_pos_enc": [x.expand(b, *x.shape[1:]) for x in outs[0]["maskmem_pos_enc"]],
            "obj_ptr": torch.cat([o["obj_ptr"] for o in outs]),
        }

    return {
        "cond_frame_outputs": {t: stack([o.cond[t] for o in objs]) for t in objs[0].cond},
        "non_cond_frame_outputs": {t: stack([o.non_cond[t] for o in objs]) for t in objs[0].non_cond},
    }
