"""The per-crop engine of automatic mask generation: decoder batches, low-res filtering, exact windows.

Masks never go through a full-image upsampling. For each candidate the predicted IoU is filtered
first, then a stability score estimated on the low-res (256x256) logits, weighted by how many
output pixels each low-res pixel covers. Only masks within ``STAB_MARGIN`` of the threshold or
above it are upsampled, and only on their own window (see :func:`_amg_utils.interp_matrix`): the
window logits equal the official full-resolution logits, so the exact stability score, the box
and the binary mask are the official ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from napari_sam._amg_utils import interp_matrix, is_box_near_crop_edge, support_ranges

STAB_MARGIN = 0.1  # low-res stability screening margin (the estimate is within ~0.02 in practice)


@dataclass
class Masks:
    """Candidate masks, struct of arrays. Boxes XYXY inclusive, image coordinates (x, y).

    ``crops[i]`` is the (h, w) bool mask inside ``boxes[i]`` (kept on the model's device).
    """

    iou: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    boxes: torch.Tensor = field(default_factory=lambda: torch.empty(0, 4, dtype=torch.long))
    points: torch.Tensor = field(default_factory=lambda: torch.empty(0, 2, dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.empty(0, 4, dtype=torch.long))
    crops: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    def select(self, idx: torch.Tensor) -> Masks:
        """Rows ``idx`` (indices, in that order, or a bool mask)."""
        idx = torch.as_tensor(idx).cpu()
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        il = idx.tolist()
        return Masks(
            self.iou[idx], self.stability[idx], self.boxes[idx], self.points[idx], self.crop_boxes[idx],
            [self.crops[i] for i in il],
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
        )

    def full(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """Mask ``i`` pasted into a (H, W) bool array."""
        out = np.zeros(size, dtype=bool)
        x0, y0, x1, y1 = self.boxes[i].tolist()
        if x1 >= x0 and y1 >= y0 and self.crops[i].numel():
            out[y0 : y1 + 1, x0 : x1 + 1] = self.crops[i].cpu().numpy()
        return out


class CropContext:
    """Everything needed to turn low-res logits of one crop into exact full-resolution windows.

    Args:
        features: (1, C, h, w) embedding of the crop; ``input_size`` (h', w') its resized size.
        crop_box: XYXY (exclusive end) in image coordinates; the crop is (H_c, W_c).
        img_size: the model's square input side (1024); ``low``: low-res side (256).
    """

    def __init__(self, features, input_size, crop_box, img_size, low, threshold, offset, device):
        self.features, self.crop_box = features, list(crop_box)
        self.size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        self.thr, self.off = float(threshold), float(offset)
        self.ay = interp_matrix(low, img_size, int(input_size[0]), self.size[0]).to(device)
        self.ax = interp_matrix(low, img_size, int(input_size[1]), self.size[1]).to(device)
        self.ry, self.cx = support_ranges(self.ay), support_ranges(self.ax)
        # weight of a low-res pixel = number of output pixels that read it (its footprint)
        self.wy = self.ay.sum(0)
        self.wx = self.ax.sum(0)
        valid_r = torch.as_tensor(self.ry[3] >= 0, device=device)
        valid_c = torch.as_tensor(self.cx[3] >= 0, device=device)
        self.valid = valid_r[:, None] & valid_c[None, :]
        self.t_lo = min(self.thr, self.thr - self.off, self.thr + self.off)

    def approx_stability(self, low: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) logits -> (N,) stability estimated at low resolution (footprint-weighted)."""
        hi = ((low > self.thr + self.off).float() @ self.wx) @ self.wy
        lo = ((low > self.thr - self.off).float() @ self.wx) @ self.wy
        return hi / lo

    def exact(self, low: torch.Tensor) -> tuple[float, float, list[int], torch.Tensor]:
        """One (256, 256) logit map -> (intersections, unions, box XYXY incl. in crop coords, bool crop)."""
        m = (low > self.t_lo) & self.valid
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        if rows.numel() == 0:
            return 0.0, 0.0, [0, 0, 0, 0], torch.zeros(0, 0, dtype=torch.bool, device=low.device)
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        y0, y1 = int(self.ry[2][r0]), int(self.ry[3][r1]) + 1  # output rows reading any of r0..r1
        x0, x1 = int(self.cx[2][c0]), int(self.cx[3][c1]) + 1
        lr0, lr1 = int(self.ry[0][y0]), int(self.ry[1][y1 - 1]) + 1  # low-res rows those outputs read
        lc0, lc1 = int(self.cx[0][x0]), int(self.cx[1][x1 - 1]) + 1
        block = low[lr0:lr1, lc0:lc1]
        ay, ax = self.ay[y0:y1, lr0:lr1], self.ax[x0:x1, lc0:lc1]
        if (y1 - y0) * (lc1 - lc0) <= (x1 - x0) * (lr1 - lr0):
            full = (ay @ block) @ ax.T
        else:
            full = ay @ (block @ ax.T)
        inter = float((full > self.thr + self.off).sum())
        union = float((full > self.thr - self.off).sum())
        binary = full > self.thr
        br, bc = torch.nonzero(binary.any(1)).flatten(), torch.nonzero(binary.any(0)).flatten()
        if br.numel() == 0:
            return inter, union, [0, 0, 0, 0], binary[:0, :0]
        a, b, c, d = int(br[0]), int(br[-1]), int(bc[0]), int(bc[-1])
        return inter, union, [x0 + c, y0 + a, x0 + d, y0 + b], binary[a : b + 1, c : d + 1]


def process_batch(gen, ctx: CropContext, points: np.ndarray, orig_size: tuple[int, int]) -> Masks:
    """Decode a batch of (B, 2) point prompts (x, y, crop pixels) and keep the masks that pass the filters."""
    model, dev = gen.predictor.model, gen.predictor.device
    coords = gen.predictor.transform.apply_coords(points, ctx.size)
    c = torch.as_tensor(coords, dtype=torch.float, device=dev)[:, None, :]
    lab = torch.ones(c.shape[0], 1, dtype=torch.int, device=dev)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(c, lab), boxes=None, masks=None)
        low, iou = model.mask_decoder(
            image_embeddings=ctx.features, image_pe=ctx.pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True,
        )
        n_out = low.shape[1]
        low, iou = low.flatten(0, 1).float(), iou.flatten(0, 1).float()
        keep = torch.ones_like(iou, dtype=torch.bool)
        if gen.pred_iou_thresh > 0.0:
            keep &= iou > gen.pred_iou_thresh
        if gen.stability_score_thresh > 0.0 and bool(keep.any()):
            est = torch.zeros_like(iou)
            est[keep] = ctx.approx_stability(low[keep])
            keep &= est >= gen.stability_score_thresh - STAB_MARGIN
        idx = torch.nonzero(keep).flatten()
        if idx.numel() == 0:
            return Masks()
        res = [ctx.exact(low[i]) for i in idx.tolist()]
        inter = torch.tensor([r[0] for r in res], dtype=torch.float32)
        union = torch.tensor([r[1] for r in res], dtype=torch.float32)
        stab = inter / union
        boxes = torch.tensor([r[2] for r in res], dtype=torch.long)
        x0, y0 = ctx.crop_box[:2]
        boxes = boxes + torch.tensor([x0, y0, x0, y0])
        pts = torch.as_tensor(points, dtype=torch.float64)[idx.cpu() // n_out] + torch.tensor([x0, y0])
        ok = torch.ones(len(res), dtype=torch.bool)
        if gen.stability_score_thresh > 0.0:
            ok &= stab >= gen.stability_score_thresh
        ok &= ~is_box_near_crop_edge(boxes, ctx.crop_box, [0, 0, orig_size[1], orig_size[0]])
        out = Masks(
            iou[idx].cpu(), stab, boxes, pts, torch.tensor([ctx.crop_box] * len(res), dtype=torch.long),
            [r[3] for r in res],
        )
    return out.select(ok)
