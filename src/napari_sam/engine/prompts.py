"""Prompts as the predictor takes them (numpy, pixels of the original image) -> tensors in the
model input's coordinates, validated with messages that name the expected shapes."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.engine.embedding import ImageEmbedding
from napari_sam.engine.transforms import ResizeLongestSide


def to_input(xy: np.ndarray, emb: ImageEmbedding, transform: ResizeLongestSide) -> np.ndarray:
    """(..., 2) (x, y) pixels of the original image -> float64 pixels of the model input."""
    if emb.input_size == emb.original_size:  # not resized (a native tile, or already img_size long)
        return np.array(xy, dtype=float)
    return transform.apply_coords(xy, emb.original_size)


def prompt_tensors(
    coords, labels, boxes, mask_input, batch: bool, emb: ImageEmbedding, transform: ResizeLongestSide,
    mask_input_size: tuple[int, int], device: torch.device,
):
    """Validate numpy prompts (``SamPredictor.predict`` / ``predict_batch``'s arguments) and move
    them to model-input coordinates: ``(coords (B, N, 2), labels (B, N), boxes (B, 4), masks (B, 1,
    4h, 4w))`` tensors on ``device`` (None where not given); ``ValueError`` naming the expected shape."""
    dims = "(B, " if batch else "("
    if coords is not None and labels is None:
        raise ValueError("point_labels must be given with point_coords")
    if labels is not None and coords is None:
        raise ValueError("point_coords must be given with point_labels")
    n = None
    c_t = l_t = b_t = m_t = None
    if coords is not None:
        coords, labels = np.asarray(coords), np.asarray(labels)
        nd = 3 if batch else 2
        if coords.ndim != nd or coords.shape[-1] != 2 or coords.shape[-2] == 0:
            raise ValueError(f"point_coords must have shape {dims}N, 2) (x, y), got {coords.shape}")
        if labels.shape != coords.shape[:-1]:
            raise ValueError(
                f"point_labels must have shape {coords.shape[:-1]} {dims}N), got {labels.shape}"
            )
        c = to_input(coords, emb, transform)
        c_t = torch.as_tensor(c, dtype=torch.float, device=device)
        l_t = torch.as_tensor(labels, dtype=torch.int, device=device)
        if not batch:
            c_t, l_t = c_t[None], l_t[None]
        n = c_t.shape[0]
    if boxes is not None:
        boxes = np.asarray(boxes)
        ok = boxes.ndim == 2 and boxes.shape[1] == 4 if batch else boxes.shape in ((4,), (1, 4))
        if not ok:
            raise ValueError(
                f"box{'es' if batch else ''} must have shape {dims}4) (x0, y0, x1, y1), got {boxes.shape}"
            )
        b_t = torch.as_tensor(
            to_input(boxes.reshape(-1, 2, 2), emb, transform).reshape(-1, 4), dtype=torch.float, device=device
        )
        if n is not None and b_t.shape[0] != n:
            raise ValueError(f"boxes has {b_t.shape[0]} rows but point_coords has batch {n}")
        n = b_t.shape[0]
    if mask_input is not None:
        m = np.asarray(mask_input)
        size = (1, *mask_input_size)
        if batch:
            ok = m.ndim == 4 and m.shape[1:] == size and m.shape[0] >= 1 and n in (None, m.shape[0])
        else:
            ok = m.shape == size
        if not ok:
            raise ValueError(
                f"mask_input must have shape {dims}1, {size[1]}, {size[2]}) (low-res logits of a "
                f"previous prediction{', one per object' if batch else ''}), got {m.shape}"
            )
        m_t = torch.as_tensor(m, dtype=torch.float, device=device)
        if not batch:
            m_t = m_t[None]
    return c_t, l_t, b_t, m_t
