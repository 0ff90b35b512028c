"""SAM 2 tracking through a stack or time series: prompts on a few slices, masks on every slice.

``VolumeTracker(model, volume, axis=0)`` works like Meta's ``SAM2VideoPredictor`` on the slices of an
``(n, H, W)`` or ``(n, H, W, 3|4)`` array-like along ``axis`` (z or t):

1. :meth:`~VolumeTracker.add_prompt` puts points, a box or a mask for an object on a slice and
   returns its mask there. A slice not tracked yet is a conditioning slice, segmented without
   memory (as SAM would); a slice already tracked gets a correction: the new clicks go to the
   decoder with the earlier logits and the memory of the other slices.
2. :meth:`~VolumeTracker.propagate` encodes the prompted slices into memory and tracks every object
   slice by slice, forward, backward or both, from the earliest prompted slice (or ``start``);
   prompted slices keep their own output. After a correction, propagate again: the corrected
   slice counts as conditioning (``corrections_as_cond``, Meta's ``add_all_frames_to_correct_as_cond``;
   without it SAM2VideoPredictor's next propagation would overwrite the correction).
3. Masks are written slice by slice into :attr:`~VolumeTracker.result` (a :class:`VolumeResult`) and
   handed to ``on_slice``; SAM 2's object score (> 0: present) is kept per object and slice:
   :meth:`~VolumeTracker.found` lists the slices an object was found on.

Image features are made slice by slice (:class:`~napari_sam.volume.frames.SliceFeatures`: a small
cache, or a ``features`` callable; ``segment_volume`` reads the ``EmbeddingStore``'s, see
:func:`~napari_sam.volume.frames.store_features`). The memory bank keeps the prompted slices and
the tracked slices within reach of the slice being tracked or of a prompted slice (``num_maskmem``
memories, ``max_obj_ptrs_in_encoder`` pointers), so memory stays flat over long stacks; a correction far
from every prompted slice then sees the prompted slices' memory only (``keep_all_memory=True``
keeps everything, as Meta does). Meta's hole filling (a CUDA extension, skipped on CPU) is off
unless ``fill_hole_area`` > 0 (then done with scipy, 8-connected holes in the low-res logits).
``batch_objects=True`` tracks the objects whose banks hold the same slices as one batch per slice
(off by default: slower and 4-6x the peak memory on a CPU, docs/sam2.md). Progress and cancel are
checked between whole slices; a cancelled run keeps whole slices only.
Prompts are SAM's: ``(x, y)`` points, ``(x0, y0, x1, y1)`` boxes in pixels of a slice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.progress import Cancel, Progress, is_cancelled
from napari_sam.errors import SamTypeError, SamUserError
from napari_sam.models.sam2.tracking import apply_non_overlapping_constraints, encode_new_memory, track_step
from napari_sam.volume.frames import FeatureFn, SliceFeatures
from napari_sam.volume.memory_bank import ObjectState, bank_key, memory_reach, stacked_bank
from napari_sam.volume.result import Prompt, VolumeResult
from napari_sam.volume.tracker_inputs import check_prompt, fill_holes

__all__ = ["VolumeTracker"]

DIRECTIONS = ("forward", "backward", "both")


class VolumeTracker:
    """SAM 2's video predictor for the slices of a stack (see the module doc).

    Args:
        model: a SAM 2 model with ``SAM2Base``'s attributes and ``forward_image`` /
            ``_prepare_backbone_features`` (our ``Sam2`` or Meta's), in eval mode.
        volume: ``(n, H, W)`` or ``(n, H, W, 3|4)`` array-like; ``axis``: the slice axis.
        features: ``z -> backbone_out`` instead of running the image encoder (e.g. a store).
        cache_size: slices whose features are kept; contrast_limits, rgb: as for the encoder.
        corrections_as_cond: a prompt on an already tracked slice becomes a conditioning slice.
        keep_all_memory: keep every tracked slice's memory (Meta's behaviour; grows with the stack).
        fill_hole_area: fill background holes up to this many low-res pixels (0: off).
        non_overlap: where objects overlap, only the one with the highest logit keeps the pixel.
        batch_objects: track the objects with the same memory slices on a slice as one batch.
    """

    def __init__(
        self,
        model: Any,
        volume: Any,
        axis: int = 0,
        *,
        features: FeatureFn | None = None,
        cache_size: int = 2,
        contrast_limits: tuple[float, float] | None = None,
        rgb: bool | None = None,
        corrections_as_cond: bool = True,
        keep_all_memory: bool = False,
        fill_hole_area: int = 0,
        non_overlap: bool = False,
        batch_objects: bool = False,
    ) -> None:
        if not all(hasattr(model, a) for a in ("forward_image", "sam_mask_decoder", "memory_encoder")):
            raise SamTypeError(f"a SAM 2 model is needed (with memory), got {type(model).__name__}")
        self.model = model
        self.frames = SliceFeatures(
            model,
            volume,
            axis,
            features=features,
            cache_size=cache_size,
            contrast_limits=contrast_limits,
            rgb=rgb,
        )
        self.n, self.axis, self.hw = self.frames.n, self.frames.axis, self.frames.slice_shape
        self.corrections_as_cond, self.keep_all_memory = bool(corrections_as_cond), bool(keep_all_memory)
        self.fill_hole_area, self.non_overlap = int(fill_hole_area), bool(non_overlap)
        self.batch_objects = bool(batch_objects)
        self.reach = memory_reach(model, self.n)
        self.objects: dict[int, ObjectState] = {}
        self.result = VolumeResult(shape=(self.n, *self.hw), axis=self.axis)
        self._maskmem_pos_enc: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ objects and prompts
    @property
    def device(self) -> torch.device:
        return self.frames.device

    @property
    def object_ids(self) -> list[int]:
        return list(self.objects)

    def _object(self, oid: Any, create: bool = False) -> ObjectState:
        if isinstance(oid, bool) or not isinstance(oid, int | np.integer) or int(oid) <= 0:
            raise SamUserError(f"an object id must be a positive integer (a label value), got {oid!r}")
        oid = int(oid)
        if oid not in self.objects:
            if not create:
                known = ", ".join(map(str, self.objects)) or "none"
                raise SamUserError(f"unknown object {oid}: the objects with prompts are {known}")
            self.objects[oid] = ObjectState(oid)
        return self.objects[oid]

    @torch.inference_mode()
    def add_prompt(
        self,
        z: int,
        oid: int,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask: Any = None,
        clear: bool = True,
    ) -> np.ndarray:
        """Prompt object ``oid`` on slice ``z``; returns its ``(H, W)`` bool mask there.

        Args:
            points: ``(N, 2)`` (x, y) pixels; labels: ``(N,)`` 1 positive / 0 negative (default all 1).
            box: ``(4,)`` (x0, y0, x1, y1) pixels (with or without points).
            mask: ``(H, W)`` bool (alone: SAM 2 takes a mask or clicks, not both).
            clear: replace this object's earlier clicks on ``z`` (else add to them; not with a box).
        """
        z = self.frames.check(z)
        pts, lab, bx, msk = check_prompt(points, labels, box, mask, clear, self.hw)
        obj = self._object(oid, create=True)
        init = z not in obj.tracked
        reverse = False if init else obj.tracked[z]
        is_cond = init or self.corrections_as_cond
        if msk is not None:
            m = torch.from_numpy(msk)[None, None].float().to(self.device)
            s = int(self.model.image_size)
            if tuple(msk.shape) != (s, s):
                m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
                m = (m >= 0.5).float()
            obj.masks[z] = m
            obj.points.pop(z, None)
            out = self._run(obj, z, init, None, m, reverse, run_mem=False)
        else:
            coords, codes = pts, lab
            if bx is not None:
                coords = np.concatenate([bx.reshape(2, 2), pts])
                codes = np.concatenate([np.array([2, 3], np.int64), lab])
            h, w = self.hw
            c = torch.tensor(coords, dtype=torch.float32)[None] / torch.tensor([w, h]) * self.model.image_size
            new = {
                "point_coords": c.to(self.device),
                "point_labels": torch.tensor(codes, dtype=torch.int32)[None].to(self.device),
            }
            old = None if clear else obj.points.get(z)
            if old is not None:
                new = {k: torch.cat([old[k], new[k]], dim=1) for k in new}
            obj.points[z] = new
            obj.masks.pop(z, None)
            prev = obj.latest(z, is_cond)
            prev_logits = None
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = torch.clamp(prev["pred_masks"].to(self.device), -32.0, 32.0)
            out = self._run(obj, z, init, new, None, reverse, run_mem=False, prev_logits=prev_logits)
        obj.temp(is_cond)[z] = out
        masks = self._write(z, {obj.oid: out}, replace=False)
        return masks[obj.oid]

    def add_prompts(self, seeds: Mapping[int, Mapping[int, Prompt | Mapping]]) -> None:
        """``{object id: {slice: Prompt or dict(points, labels, box, mask)}}``, as ``segment_volume`` takes."""
        for oid, per in seeds.items():
            for z, p in per.items():
                if isinstance(p, Mapping):
                    unknown = set(p) - {"points", "labels", "box", "mask"}
                    if unknown:
                        raise SamUserError(
                            f"unknown prompt keys {sorted(unknown)}; use points, labels, box, mask"
                        )
                    p = Prompt(**dict(p))
                self.add_prompt(z, oid, points=p.points, labels=p.labels, box=p.box, mask=p.mask)

    def clear_prompts(self, z: int, oid: int) -> None:
        """Remove object ``oid``'s prompts on slice ``z`` (its output there becomes a tracked one)."""
        self._object(oid).clear_slice(self.frames.check(z))

    def remove_object(self, oid: int) -> None:
        """Forget object ``oid`` (prompts, memory and its masks in :attr:`result`)."""
        obj = self._object(oid)
        del self.objects[obj.oid]
        for z in list(self.result.masks):
            self.result.masks[z].pop(obj.oid, None)
            self.result.scores.get(z, {}).pop(obj.oid, None)
            if not self.result.masks[z]:
                del self.result.masks[z]

    def reset(self) -> None:
        """Forget every object, prompt and result."""
        self.objects.clear()
        self.result = VolumeResult(shape=(self.n, *self.hw), axis=self.axis)

    def found(self, oid: int) -> list[int]:
        """Slices on which object ``oid`` was found (SAM 2's object score > 0), ascending."""
        return sorted(z for z, s in self._object(oid).object_scores.items() if s > 0)

    def memory_entries(self) -> dict[int, int]:
        """``{object id: outputs held in its memory bank}``."""
        return {oid: obj.n_entries for oid, obj in self.objects.items()}

    # ------------------------------------------------------------------ one slice
    def _pos_enc(self, enc: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The memory position encoding (the same on every slice: one copy kept)."""
        if enc is None:
            return None
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in enc]
        return self._maskmem_pos_enc

    def _run(self, obj, z, init, points, mask, reverse, run_mem, prev_logits=None) -> dict:
        """``track_step`` for one object on slice ``z``; the compact output the bank keeps."""
        return self._run_batch([obj], z, init, points, mask, reverse, run_mem, prev_logits)[0]

    def _run_batch(self, objs, z, init, points, mask, reverse, run_mem, prev_logits=None) -> list[dict]:
        """``track_step`` for ``objs`` (one object, or several with the same bank slices and no
        prompt here) on slice ``z`` as one batch; their outputs, in order."""
        feats, pos, sizes = self.frames.get(z)
        b = len(objs)
        bank = objs[0].output_dict
        if b > 1:
            feats, pos = [x.expand(-1, b, -1) for x in feats], [x.expand(-1, b, -1) for x in pos]
            bank = stacked_bank(objs)
        out = track_step(
            self.model,
            frame_idx=z,
            is_init_cond_frame=init,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=points,
            mask_inputs=mask,
            output_dict=bank,
            num_frames=self.n,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem,
            prev_sam_mask_logits=prev_logits,
        )
        mem = out["maskmem_features"]
        pred = out["pred_masks"]
        if self.fill_hole_area > 0:
            pred = fill_holes(pred, self.fill_hole_area)
        enc = self._pos_enc(out["maskmem_pos_enc"])
        one = (lambda t, i: t[i : i + 1].clone()) if b > 1 else (lambda t, i: t)  # no view keeps the batch
        return [
            {
                "maskmem_features": None if mem is None else one(mem, i).to(torch.bfloat16),
                "maskmem_pos_enc": enc,
                "pred_masks": one(pred, i),
                "obj_ptr": one(out["obj_ptr"], i),
                "object_score_logits": one(out["object_score_logits"], i),
                "iou": float(out["ious"].reshape(b, -1)[i, 0]),
            }
            for i in range(b)
        ]

    def _write(self, z: int, outs: dict[int, dict], replace: bool = True) -> dict[int, np.ndarray]:
        """Masks at slice resolution from the outputs' low-res logits, into :attr:`result`."""
        oids = list(outs)
        logits = torch.cat([outs[o]["pred_masks"] for o in oids], dim=0).float()
        logits = F.interpolate(logits, size=self.hw, mode="bilinear", align_corners=False)
        if self.non_overlap:
            logits = apply_non_overlapping_constraints(logits)
        masks = {o: m for o, m in zip(oids, (logits[:, 0] > 0).cpu().numpy(), strict=True)}
        per = {} if replace else dict(self.result.masks.get(z, {}))
        scores = {} if replace else dict(self.result.scores.get(z, {}))
        for o in oids:
            self.objects[o].object_scores[z] = float(outs[o]["object_score_logits"].reshape(-1)[0])
            per.pop(o, None)
            scores.pop(o, None)
            if masks[o].any():
                per[o], scores[o] = masks[o], outs[o]["iou"]
        self.result.masks.pop(z, None)
        self.result.scores.pop(z, None)
        if per:
            self.result.masks[z], self.result.scores[z] = per, scores
        return masks

    # ------------------------------------------------------------------ propagation
    def _groups(self, objs: list[ObjectState]) -> list[list[ObjectState]]:
        """``objs`` in batches tracked together: those whose banks hold the same slices (with
        ``batch_objects``; the memory encoder's non-overlap option would mix a batch's masks)."""
        if not self.batch_objects or self.model.non_overlap_masks_for_mem_enc:
            return [[o] for o in objs]
        groups: dict[tuple, list[ObjectState]] = {}
        for o in objs:
            groups.setdefault(bank_key(o), []).append(o)
        return list(groups.values())

    def _preflight(self) -> None:
        """Encode the pending prompted outputs into memory (Meta's ``propagate_in_video_preflight``)."""
        if not self.objects:
            raise SamUserError("nothing to propagate: prompt an object on a slice first")
        s = int(self.model.image_size)
        for obj in self.objects.values():
            for is_cond in (False, True):
                temp = obj.temp(is_cond)
                for z, out in temp.items():
                    if out["maskmem_features"] is None:
                        high = F.interpolate(
                            out["pred_masks"], size=(s, s), mode="bilinear", align_corners=False
                        )
                        feats, _, sizes = self.frames.get(z)
                        mem, pos = encode_new_memory(
                            self.model, feats, sizes, high, out["object_score_logits"], is_mask_from_pts=True
                        )
                        out["maskmem_features"] = mem.to(torch.bfloat16)
                        out["maskmem_pos_enc"] = self._pos_enc(pos)
                    (obj.cond if is_cond else obj.non_cond)[z] = out
                temp.clear()
            if not obj.cond:
                raise SamUserError(f"object {obj.oid} has no prompt on an untracked slice: prompt it first")
            for z in obj.cond:
                obj.non_cond.pop(z, None)

    @torch.inference_mode()
    def propagate(
        self,
        direction: str = "both",
        start: int | None = None,
        max_slices: int | None = None,
        progress: Progress = None,
        cancel: Cancel = None,
        on_slice: Callable[[int, dict[int, np.ndarray]], None] | None = None,
    ) -> VolumeResult:
        """Track every object through the stack; returns :attr:`result` (updated slice by slice).

        Args:
            direction: ``"forward"`` (increasing slice index), ``"backward"``, or ``"both"`` (forward,
                then backward from the same start).
            start: first slice (None: the earliest prompted slice of any object).
            max_slices: at most this many slices beyond ``start`` each way (None: to the end).
            progress: ``progress(done, total)`` after each slice; cancel: checked before each slice.
            on_slice: ``on_slice(z, {object id: (H, W) bool})`` after each slice (all objects,
                empty masks included, so a caller can clear what moved).
        """
        if direction not in DIRECTIONS:
            raise SamUserError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        if max_slices is not None and (isinstance(max_slices, bool) or int(max_slices) < 0):
            raise SamUserError(f"max_slices must be a non-negative integer or None, got {max_slices!r}")
        self._preflight()
        start = (
            min(z for o in self.objects.values() for z in o.cond)
            if start is None
            else self.frames.check(start)
        )
        lim = self.n if max_slices is None else int(max_slices)
        orders: list[tuple[bool, range]] = []
        if direction in ("forward", "both"):
            orders.append((False, range(start, min(start + lim, self.n - 1) + 1)))
        if direction in ("backward", "both") and start > 0:
            orders.append((True, range(start, max(start - lim, 0) - 1, -1)))
        total, done = sum(len(o) for _, o in orders), 0
        self.result.cancelled = False
        for reverse, order in orders:
            for z in order:
                if is_cancelled(cancel):
                    self.result.cancelled = True
                    return self.result
                outs = {o.oid: o.cond[z] for o in self.objects.values() if z in o.cond}
                for group in self._groups([o for o in self.objects.values() if z not in o.cond]):
                    done_here = self._run_batch(group, z, False, None, None, reverse, True)
                    for obj, out in zip(group, done_here, strict=True):
                        outs[obj.oid] = obj.non_cond[z] = out
                for obj in self.objects.values():
                    obj.tracked[z] = reverse
                    if not self.keep_all_memory:
                        obj.prune([z, *obj.cond], self.reach)
                outs = {oid: outs[oid] for oid in self.objects}
                masks = self._write(z, outs)
                done += 1
                if on_slice is not None:
                    on_slice(z, masks)
                if progress is not None:
                    progress(done, total)
        return self.result
