"""Prompts as the predictor takes them (numpy, pixels of the original image) -> tensors in the
model input's coordinates, validated with messages that name the expected shapes."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from napari_sam.engine.embedding import ImageEmbedding
from napari_sam.engine.transforms import ResizeLongestSide
from napari_sam.errors import SamInputWarning, SamTypeError, SamUserError


def _show(a: np.ndarray, n: int = 4) -> str:
    """A few values of ``a`` for a message."""
    flat = np.asarray(a).ravel()
    vals = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in flat[:n])
    return f"[{vals}{', ...' if flat.size > n else ''}]"


def as_numbers(a, name: str, what: str) -> np.ndarray:
    """``a`` as a float64 array, or ``SamTypeError`` when it holds something else (strings, None)."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise SamTypeError(
                f"{name} must hold numbers ({what}), got dtype {arr.dtype} with values {_show(arr)}; "
                f"pass a numeric array"
            ) from None
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def check_finite(a: np.ndarray, name: str, what: str) -> None:
    if not np.isfinite(a).all():
        bad = a[~np.isfinite(a)]
        raise SamUserError(
            f"{name} must be finite ({what}), got {bad.size} non-finite value(s) {_show(bad)}; "
            f"remove or replace the NaN/inf entries"
        )


def check_labels(labels, batch: bool) -> np.ndarray:
    """``point_labels`` as int64: 1 positive, 0 negative, -1 padding (ignored); ``SamTypeError``
    for strings/objects/fractions, ``SamUserError`` for other values."""
    allowed = (-1, 0, 1)  # -1 also in ``predict``: the official predictor's (a row of a batch)
    meaning = "1 positive, 0 negative, -1 padding" + (" of shorter rows" if batch else "")
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr)))):
        raise SamTypeError(
            f"point_labels must be integers ({meaning}), got dtype {arr.dtype} with values {_show(arr)}; "
            f"pass e.g. np.array([1, 0])"
        )
    arr = arr.astype(np.int64)
    bad = arr[~np.isin(arr, allowed)]
    if bad.size:
        raise SamUserError(
            f"point_labels must be {' or '.join(map(str, allowed))} ({meaning}), got {_show(np.unique(bad))}; "
            f"use 1 for points on the object and 0 for points off it"
        )
    return arr


def check_boxes(boxes: np.ndarray, name: str) -> None:
    """(..., 4) boxes: finite, and x0 <= x1, y0 <= y1 (``SamUserError`` saying the expected order)."""
    check_finite(boxes, name, "(x0, y0, x1, y1) pixels")
    b = boxes.reshape(-1, 4)
    bad = (b[:, 0] > b[:, 2]) | (b[:, 1] > b[:, 3])
    if bad.any():
        raise SamUserError(
            f"{name} must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 (top-left corner, then bottom-right), "
            f"got {b[bad][0].tolist()}{f' and {int(bad.sum()) - 1} more' if bad.sum() > 1 else ''}; "
            f"swap the corners (or pass (row, col) data through napari_sam.viewer.slicing first)"
        )


def warn_outside(coords, labels, boxes, size: tuple[int, int], stacklevel: int = 5) -> None:
    """One ``SamInputWarning`` when points (not padding) or boxes lie wholly outside an (H, W) image."""
    h, w = size
    parts = []
    if coords is not None:
        pts = coords.reshape(-1, 2)[labels.reshape(-1) >= 0]
        out = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if out.any():
            parts.append(f"{int(out.sum())} of {len(pts)} point(s) (first {pts[out][0].tolist()})")
    if boxes is not None:
        b = boxes.reshape(-1, 4)
        out = (b[:, 2] < 0) | (b[:, 0] > w) | (b[:, 3] < 0) | (b[:, 1] > h)
        if out.any():
            parts.append(f"{int(out.sum())} of {len(b)} box(es) (first {b[out][0].tolist()})")
    if parts:
        warnings.warn(
            f"{' and '.join(parts)} lie outside the image (x in [0, {w}], y in [0, {h}]): their masks will "
            f"be empty or meaningless; prompts are SAM's (x, y) pixels of the original image, not (row, col)",
            SamInputWarning, stacklevel=stacklevel,
        )


def to_input(xy: np.ndarray, emb: ImageEmbedding, transform: ResizeLongestSide) -> np.ndarray:
    """(..., 2) (x, y) pixels of the original image -> float64 pixels of the model input."""
    if emb.input_size == emb.original_size:  # not resized (a native tile, or already img_size long)
        return np.array(xy, dtype=float)
    (h, w), (ih, iw) = emb.original_size, emb.input_size
    if tuple(emb.input_size) == tuple(transform.get_preprocess_shape(h, w, transform.target_length)):
        return transform.apply_coords(xy, emb.original_size)  # the model's own resize
    out = np.array(xy, dtype=float)  # scaled by a zoom (``model_input``): the same per-axis factors
    out[..., 0] *= iw / w
    out[..., 1] *= ih / h
    return out


def prompt_tensors(
    coords, labels, boxes, mask_input, batch: bool, emb: ImageEmbedding, transform: ResizeLongestSide,
    mask_input_size: tuple[int, int], device: torch.device,
):
    """Validate numpy prompts (``SamPredictor.predict`` / ``predict_batch``'s arguments) and move
    them to model-input coordinates: ``(coords (B, N, 2), labels (B, N), boxes (B, 4), masks (B, 1,
    4h, 4w))`` tensors on ``device`` (None where not given); ``ValueError`` naming the expected shape.

    Bad values raise ``SamUserError`` (a ``ValueError``; ``SamTypeError`` for strings and other
    non-numbers): non-finite coordinates, boxes or ``mask_input``, labels other than 1/0 (and -1,
    padding, in a batch), boxes with x0 > x1 or y0 > y1. Points or boxes wholly outside the image
    give one ``SamInputWarning``."""
    dims = "(B, " if batch else "("
    if coords is not None and labels is None:
        raise SamUserError("point_labels must be given with point_coords")
    if labels is not None and coords is None:
        raise SamUserError("point_coords must be given with point_labels")
    n = None
    c_t = l_t = b_t = m_t = None
    if coords is not None:
        coords = as_numbers(coords, "point_coords", "(x, y) pixels")
        labels = np.asarray(labels)
        nd = 3 if batch else 2
        if coords.ndim != nd or coords.shape[-1] != 2 or coords.shape[-2] == 0:
            raise SamUserError(f"point_coords must have shape {dims}N, 2) (x, y), got {coords.shape}")
        if labels.shape != coords.shape[:-1]:
            raise SamUserError(
                f"point_labels must have shape {coords.shape[:-1]} {dims}N), got {labels.shape}"
            )
        check_finite(coords, "point_coords", "(x, y) pixels")
        labels = check_labels(labels, batch)
        c = to_input(coords, emb, transform)
        c_t = torch.as_tensor(c, dtype=torch.float, device=device)
        l_t = torch.as_tensor(labels, dtype=torch.int, device=device)
        if not batch:
            c_t, l_t = c_t[None], l_t[None]
        n = c_t.shape[0]
    if boxes is not None:
        boxes = as_numbers(boxes, "box" + ("es" if batch else ""), "(x0, y0, x1, y1) pixels")
        ok = boxes.ndim == 2 and boxes.shape[1] == 4 if batch else boxes.shape in ((4,), (1, 4))
        if not ok:
            raise SamUserError(
                f"box{'es' if batch else ''} must have shape {dims}4) (x0, y0, x1, y1), got {boxes.shape}"
            )
        check_boxes(boxes, "box" + ("es" if batch else ""))
        b_t = torch.as_tensor(
            to_input(boxes.reshape(-1, 2, 2), emb, transform).reshape(-1, 4), dtype=torch.float, device=device
        )
        if n is not None and b_t.shape[0] != n:
            raise SamUserError(f"boxes has {b_t.shape[0]} rows but point_coords has batch {n}")
        n = b_t.shape[0]
    if mask_input is not None:
        m = as_numbers(mask_input, "mask_input", "low-res logits")
        size = (1, *mask_input_size)
        if batch:
            ok = m.ndim == 4 and m.shape[1:] == size and m.shape[0] >= 1 and n in (None, m.shape[0])
        else:
            ok = m.shape == size
        if not ok:
            raise SamUserError(
                f"mask_input must have shape {dims}1, {size[1]}, {size[2]}) (low-res logits of a "
                f"previous prediction{', one per object' if batch else ''}), got {m.shape}"
            )
        check_finite(m, "mask_input", "low-res logits of a previous prediction")
        m_t = torch.as_tensor(m, dtype=torch.float, device=device)
        if not batch:
            m_t = m_t[None]
    warn_outside(coords, labels, boxes, emb.original_size)
    return c_t, l_t, b_t, m_t
