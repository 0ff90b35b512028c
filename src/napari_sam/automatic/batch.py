"""The per-crop engine of automatic mask generation: decoder batches, filtering, upsampling.

The official generator upsamples every mask of a batch to full resolution, then filters. Here the
predicted IoU is filtered first (the decoder upscales only the masks that pass it), then the kept
masks are upsampled with the predictor's exact official upsampling, in chunks, on the model's
device, and their stability score, box and mask are the official ones.

(A low-res estimate of the stability score used to screen masks before upsampling; on a thin mask
at the image border it was 0.80 where the exact score is 0.96, so a mask of the official output
was lost. With the counts through numpy, upsampling every IoU-kept mask costs no more.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from napari_sam.automatic.utils import is_box_near_crop_edge
from napari_sam.engine.model_interface import decode
from napari_sam.models.mask_decoder import MaskDecoder


@dataclass
class Masks:
    """Candidate masks, struct of arrays. Boxes XYXY inclusive, image coordinates (x, y).

    ``crops[i]`` is the (h, w) bool mask inside ``boxes[i]`` (kept on the model's device). Off a
    CPU the crops are made only for the masks that survive the crop's filters and NMS
    (:meth:`CropContext.with_crops`): until then ``crops`` is empty and ``low`` holds each mask's
    low-res logits ``(N, 256, 256)`` on the device.
    """

    iou: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    boxes: torch.Tensor = field(default_factory=lambda: torch.empty(0, 4, dtype=torch.long))
    points: torch.Tensor = field(default_factory=lambda: torch.empty(0, 2, dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.empty(0, 4, dtype=torch.long))
    crops: list[torch.Tensor] = field(default_factory=list)
    low: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.iou)

    def select(self, idx: torch.Tensor) -> Masks:
        """Rows ``idx`` (indices, in that order, or a bool mask)."""
        idx = torch.as_tensor(idx).cpu()
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        il = idx.tolist()
        return Masks(
            self.iou[idx], self.stability[idx], self.boxes[idx], self.points[idx], self.crop_boxes[idx],
            [self.crops[i] for i in il] if self.crops else [],
            None if self.low is None else self.low[idx.to(self.low.device)],
        )

    @staticmethod
    def cat(parts: list[Masks]) -> Masks:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Masks()
        return Masks(
            torch.cat([p.iou for p in parts]), torch.cat([p.stability for p in parts]),
            torch.cat([p.boxes for p in parts]), torch.cat([p.points for p in parts]),
            torch.cat([p.crop_boxes for p in parts]), [c for p in parts for c in p.crops],
            None if any(p.low is None for p in parts) else torch.cat([p.low for p in parts]),
        )

    def full(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """Mask ``i`` pasted into a (H, W) bool array."""
        out = np.zeros(size, dtype=bool)
        x0, y0, x1, y1 = self.boxes[i].tolist()
        if x1 >= x0 and y1 >= y0 and self.crops[i].numel():
            out[y0 : y1 + 1, x0 : x1 + 1] = self.crops[i].cpu().numpy()
        return out


class CropContext:
    """What is needed to turn the low-res logits of one crop into its full-resolution masks.

    Args:
        predictor: the ``SamPredictor`` (its ``postprocess_masks`` gives the official upsampling).
        features: (1, C, h, w) embedding of the crop; ``input_size`` (h', w') its resized size.
        crop_box: XYXY (exclusive end) in image coordinates; the crop is (H_c, W_c).
        high_res: SAM 2's high-resolution features of the crop (None for SAM).
    """

    def __init__(self, predictor, features, input_size, crop_box, threshold, offset, chunk_pixels, high_res=None):
        self.predictor, self.features, self.input_size = predictor, features, tuple(input_size)
        self.high_res = high_res
        self.crop_box = list(crop_box)
        self.size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        self.thr, self.off = float(threshold), float(offset)
        self.chunk = max(1, int(chunk_pixels) // max(1, self.size[0] * self.size[1]))
        self.pe = None
        self.deferred = defer_crops(features.device)  # crops made for the survivors only (with_crops)
        self.prepared = None  # the decoder's per-crop work (FastMaskDecoder.prepare_image), made on first use

    def exact(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(N, 256, 256) logits -> intersections (N,), unions (N,), boxes (N, 4) XYXY inclusive in crop
        coordinates, and the (h, w) bool mask inside each box (none when ``deferred``); upsampled
        in chunks (memory bound)."""
        inter, union, boxes, crops = [], [], [], []
        for s in range(0, low.shape[0], self.chunk):
            full = self._upsample(low[s : s + self.chunk])
            inter.append(count_true(full > self.thr + self.off))
            union.append(count_true(full > self.thr - self.off))
            binary = full > self.thr
            del full
            b = mask_boxes(binary)
            boxes.append(b)
            if not self.deferred:
                crops += _crops(binary, b)
        return torch.cat(inter).cpu(), torch.cat(union).cpu(), torch.cat(boxes).cpu(), crops

    def with_crops(self, data: Masks) -> Masks:
        """``data`` (masks of this crop) with their crops made from their low-res logits: each
        mask's box cut on the device, all of them packed into one tensor and moved to the host in
        one transfer per chunk (a few hundred KB for nuclei, instead of every full mask): the
        deferred step of a GPU's pipeline (``data`` itself when it has its crops)."""
        if data.low is None or data.crops or not len(data):
            return data
        x0, y0 = self.crop_box[:2]
        boxes = (data.boxes - torch.tensor([x0, y0, x0, y0])).tolist()
        crops: list[torch.Tensor] = []
        for s in range(0, len(data), self.chunk):
            binary = self._upsample(data.low[s : s + self.chunk]) > self.thr
            part = boxes[s : s + self.chunk]
            shapes = [(max(0, y1 - yy0 + 1), max(0, x1 - xx0 + 1)) for xx0, yy0, x1, y1 in part]
            packed = torch.cat(
                [m[yy0 : yy0 + h, xx0 : xx0 + w].reshape(-1) for m, (xx0, yy0, _, _), (h, w) in zip(binary, part, shapes, strict=True)]
            ).cpu()
            crops += [c.view(h, w) for c, (h, w) in zip(packed.split([h * w for h, w in shapes]), shapes, strict=True)]
        return Masks(data.iou, data.stability, data.boxes, data.points, data.crop_boxes, crops)

    def _upsample(self, low: torch.Tensor) -> torch.Tensor:
        """(n, 256, 256) logits -> (n, H_c, W_c) logits at the crop's size (the official resize)."""
        return self.predictor.postprocess_masks(low[:, None], self.input_size, self.size, return_logits=True)[:, 0]


def defer_crops(device: torch.device) -> bool:
    """Whether masks on ``device`` get their crops after the crop's filters and NMS, from their
    low-res logits upsampled again (a GPU: upsampling is cheap there, per-mask slicing and
    transfers are not), rather than while they are first upsampled (a CPU)."""
    return device.type != "cpu"


def default_points_per_batch(device: torch.device) -> int:
    """Prompts decoded together when the caller does not say: the official 64 on a CPU and on a
    small GPU, 256 on a GPU with 32 GiB or more (a batch of 256 holds ~8 GiB with SAM's ViT-H)."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= 32 * 2**30:
        return 256
    return 64


def _crops(binary: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
    """(n, H, W) bool masks -> the (h, w) mask inside each of ``boxes (n, 4)`` XYXY inclusive (empty
    for an empty mask)."""
    return [
        m[y0 : y1 + 1, x0 : x1 + 1].clone() if x1 >= x0 else m[:0, :0].clone()
        for m, (x0, y0, x1, y1) in zip(binary, boxes.tolist(), strict=True)
    ]


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """(N, ...) bool -> (N,) int64 counts of True. On a CPU through numpy's ``count_nonzero``, one
    row at a time: ~60x faster than torch's bool ``sum`` (which widens every element to int64)."""
    if masks.device.type != "cpu":
        return masks.flatten(1).sum(1)
    rows = masks.flatten(1).numpy()
    return torch.tensor([np.count_nonzero(r) for r in rows], dtype=torch.int64)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) XYXY inclusive boxes (long); [0, 0, 0, 0] for empty masks."""
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    x0 = torch.where(cols, ar_w, w).amin(1)
    out = torch.stack([x0, y0, x1, y1], 1)
    return torch.where((y1 >= 0)[:, None], out, torch.zeros_like(out))


def decode_filtered(predictor, ctx: CropContext, sparse, dense, min_iou: float, points=None):
    """Multimask decoding keeping masks with predicted IoU > ``min_iou``: IoUs (B, 3), keep (B, 3),
    kept low-res logits (K, 256, 256). Neither SAM decoder upscales the masks of prompts whose
    masks all fail ``min_iou``: the fast one (a CPU predictor's) skips every failing mask and does
    the crop's prompt-independent work once (``ctx.prepared``); the plain one (a GPU's) runs its
    transformer on the whole batch, then upscales the prompts with a mask that passes. Any other
    model (SAM 2) decodes through its ``decode`` (from the points: ``sparse``/``dense`` unused),
    whole, then filtered."""
    features, pe = ctx.features, ctx.pe
    fast, decoder = predictor.fast_decoder, predictor.model.mask_decoder
    if fast is not None:
        if ctx.prepared is None:
            ctx.prepared = fast.prepare_image(features, pe, dense)
        return fast.predict_filtered(features, pe, sparse, dense, True, min_iou, ctx.prepared)
    if type(decoder) is not MaskDecoder:
        low, iou = decode(predictor.model, features, pe, points, None, None, True, ctx.high_res)
        keep = iou > min_iou
        return iou, keep, low[keep]
    hs, src = decoder.attend(features, pe, sparse, dense)
    iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]  # the multimask outputs
    keep = iou > min_iou
    rows = keep.any(1).nonzero().flatten()
    low = decoder.upscale_masks(hs[rows], src[rows])[:, 1:]
    return iou, keep, low[keep[rows]]


def process_batch(gen, ctx: CropContext, points: np.ndarray, orig_size: tuple[int, int]) -> Masks:
    """Decode a batch of (B, 2) point prompts (x, y, crop pixels) and keep the masks that pass the filters."""
    model, dev = gen.predictor.model, gen.predictor.device
    coords = gen.predictor.transform.apply_coords(points, ctx.size)
    c = torch.as_tensor(coords, dtype=torch.float, device=dev)[:, None, :]
    lab = torch.ones(c.shape[0], 1, dtype=torch.int, device=dev)
    with torch.inference_mode():
        sam = type(model.mask_decoder) is MaskDecoder
        sparse, dense = model.prompt_encoder(points=(c, lab), boxes=None, masks=None) if sam else (None, None)
        min_iou = gen.pred_iou_thresh if gen.pred_iou_thresh > 0.0 else float("-inf")
        iou, keep, low = decode_filtered(gen.predictor, ctx, sparse, dense, min_iou, (c, lab))
        n_out = iou.shape[1]
        iou, keep, low = iou.flatten(0, 1).float(), keep.flatten(), low.float()  # low: (keep.sum(), 256, 256)
        idx = torch.nonzero(keep).flatten()
        if idx.numel() == 0:
            return Masks()
        inter, union, boxes, crops = ctx.exact(low)
        stab = inter.float() / union.float()
        x0, y0 = ctx.crop_box[:2]
        boxes = boxes + torch.tensor([x0, y0, x0, y0])
        pts = torch.as_tensor(points, dtype=torch.float64)[idx.cpu() // n_out] + torch.tensor([x0, y0])
        ok = torch.ones(len(idx), dtype=torch.bool)
        if gen.stability_score_thresh > 0.0:
            ok &= stab >= gen.stability_score_thresh
        ok &= ~is_box_near_crop_edge(boxes, ctx.crop_box, [0, 0, orig_size[1], orig_size[0]])
        out = Masks(
            iou[idx].cpu(), stab, boxes, pts, torch.tensor([ctx.crop_box] * len(idx), dtype=torch.long), crops,
            low if ctx.deferred else None,
        )
    return out.select(ok)
