"""SAM's training losses: focal (x20) + dice on mask logits, MSE between predicted and actual IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sigmoid focal loss, mean over pixels. ``logits, target (N, H, W)`` -> ``(N,)``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss. ``logits, target (N, H, W)`` -> ``(N,)``."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with the binary target, ``(N, H, W)`` -> ``(N,)`` (no gradient)."""
    with torch.no_grad():
        p = (logits > 0).flatten(1)
        t = target.flatten(1) > 0.5
        inter = (p & t).sum(1).float()
        union = (p | t).sum(1).float()
        return inter / union.clamp(min=1)


def sam_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, focal_w: float = 20.0, dice_w: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's loss for M candidate masks per object, back-propagating only the best one.

    ``logits (N, M, H, W)``, ``iou_pred (N, M)``, ``target (N, H, W)`` in {0, 1}.
    Returns (scalar loss: min over M of focal*20 + dice, plus MSE of every IoU prediction;
    IoU of the chosen masks ``(N,)``).
    """
    n, m = logits.shape[:2]
    tgt = target[:, None].expand(-1, m, -1, -1).reshape(n * m, *target.shape[1:])
    flat = logits.reshape(n * m, *logits.shape[2:])
    per = (focal_w * focal_loss(flat, tgt) + dice_w * dice_loss(flat, tgt)).reshape(n, m)
    iou = mask_iou(flat, tgt).reshape(n, m)
    best = per.argmin(1)
    mask_loss = per.gather(1, best[:, None]).mean()
    iou_loss = F.mse_loss(iou_pred, iou)
    return mask_loss + iou_loss, iou.gather(1, best[:, None])[:, 0]
