"""Helpers for automatic mask generation: point grids, crop boxes, NMS, exact upsampling, RLE, cleanup.

Pure torch/numpy (plus scikit-image for connected components); no torchvision. Conventions:
boxes are XYXY with *inclusive* pixel indices (as the official ``batched_mask_to_box``), points
are (x, y), image sizes are (H, W).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
import torch

from napari_sam import DISTRIBUTION
from napari_sam.engine.tiling import tile_origins
from napari_sam.errors import MissingDependencyError, SamUserError


# ----------------------------------------------------------------------------- grids and crops
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) evenly spaced in [0, 1]^2, cell centres, row-major (as the official)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY (exclusive end) and their layer: the whole image, then (2**i)**2 crops per layer i."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        cw, ch = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        x0s = [int((cw - overlap) * i) for i in range(n)]
        y0s = [int((ch - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + cw, im_w), min(y0 + ch, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def tile_boxes(im_size: tuple[int, int], tile: int, overlap: int) -> list[list[int]]:
    """XYXY (exclusive end) tiles of side <= ``tile`` covering the image, neighbours sharing ``overlap`` px."""
    im_h, im_w = im_size
    return [[x, y, min(x + tile, im_w), min(y + tile, im_h)]
            for y in tile_origins(im_h, tile, overlap) for x in tile_origins(im_w, tile, overlap)]


# ----------------------------------------------------------------------------- boxes and NMS
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY -> (N,) ``(x1 - x0) * (y1 - y0)`` (torchvision's convention)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS like ``torchvision.ops.nms``: indices kept, by descending score (stable on ties).

    A box is dropped when its IoU with an already kept, higher scored box is > ``iou_threshold``.
    The (N, N) IoU matrix is computed once (vectorised); the greedy pass is a loop over kept boxes.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores.float(), descending=True, stable=True)
    b = boxes[order].double().cpu()
    area = box_area(b)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = (inter / (area[:, None] + area[None, :] - inter)).float().numpy() > iou_threshold
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: boxes (image coordinates) within ``atol`` of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = boxes.float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def box_xyxy_to_xywh(box: list[float] | np.ndarray) -> list[float]:
    """XYXY -> XYWH with ``w = x1 - x0`` (the official convention for inclusive boxes)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


# ----------------------------------------------------------------------------- RLE and cleanup
def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> uncompressed RLE ``{"size": [H, W], "counts": [...]}`` in column-major order (COCO)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    idx = np.concatenate([[0], change, [h * w]])
    counts = np.diff(idx).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool."""
    h, w = rle["size"]
    vals = np.zeros(len(rle["counts"]), dtype=bool)
    vals[1::2] = True
    return np.repeat(vals, rle["counts"]).reshape(w, h).T


def coco_mask_utils() -> Any:
    """``pycocotools.mask`` (the optional extra ``coco``), or ``MissingDependencyError`` saying what to install."""
    try:
        from pycocotools import mask as mask_utils  # type: ignore  # optional: imported only when asked for
    except ImportError:
        raise MissingDependencyError(
            f"output_mode='coco_rle' needs pycocotools, which is not installed: pip install '{DISTRIBUTION}[coco]' "
            "(or pip install pycocotools); or use output_mode='uncompressed_rle' (the same masks as "
            "{'size', 'counts'} dicts, napari_sam.automatic.utils.rle_to_mask decodes them)"
        ) from None
    return mask_utils


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Compressed COCO RLE (needs pycocotools: ``MissingDependencyError`` without it)."""
    mask_utils = coco_mask_utils()
    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode='holes'``) or drop islands (``'islands'``) smaller than ``area_thresh``.

    Same rule as the official (OpenCV, 8-connectivity), with scikit-image. If every island is
    small the largest one is kept. Returns the mask and whether it changed.
    """
    from skimage.measure import label

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    regions = label(holes ^ mask, connectivity=2, background=0)
    sizes = np.bincount(regions.ravel())[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if holes:
        fill = np.zeros(sizes.size + 1, dtype=bool)
        fill[0] = True
        fill[small] = True
    else:
        fill = np.ones(sizes.size + 1, dtype=bool)
        fill[0] = False
        fill[small] = False
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[regions], True


def fill_holes_with_outside(p: np.ndarray, ring: np.ndarray, area: int) -> tuple[np.ndarray, bool]:
    """Fill background components of ``p`` (bool) smaller than ``area`` (8-connectivity), except those
    touching ``ring`` (they belong to the large background outside the mask's box)."""
    from skimage.measure import label

    regions = label(~p, connectivity=2, background=0)
    sizes = np.bincount(regions.ravel())
    sizes[np.unique(regions[ring])] = np.iinfo(sizes.dtype).max
    small = np.flatnonzero(sizes < area)
    small = small[small > 0]
    if small.size == 0:
        return p, False
    return p | np.isin(regions, small), True


# ----------------------------------------------------------------------------- parameter checks
def check_params(
    points_per_side, points_per_batch, crop_n_layers, downscale, tile_size, min_area, chunk_pixels, **unit: float
) -> None:
    """``SamUserError`` (a ``ValueError``) for parameters out of their range, before any work."""
    def positive_int(value, name: str, minimum: int = 1) -> None:
        try:
            ok = not isinstance(value, bool) and float(value).is_integer() and value >= minimum
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise SamUserError(f"{name} must be an integer >= {minimum}, got {value!r}")

    if points_per_side is not None:
        positive_int(points_per_side, "points_per_side")
    if points_per_batch is not None:
        positive_int(points_per_batch, "points_per_batch")
    positive_int(crop_n_layers, "crop_n_layers", 0)
    positive_int(downscale, "crop_n_points_downscale_factor")
    positive_int(chunk_pixels, "chunk_pixels")
    positive_int(min_area, "min_mask_region_area", 0)
    if tile_size is not None:
        positive_int(tile_size, "tile_size")
    if points_per_side is not None and int(points_per_side / downscale**crop_n_layers) < 1:
        raise SamUserError(
            f"points_per_side={points_per_side} / crop_n_points_downscale_factor={downscale}**crop_n_layers="
            f"{crop_n_layers} leaves no point in the last crop layer; use fewer layers or a smaller factor"
        )
    for name, value in unit.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise SamUserError(f"{name} must be a number in [0, 1], got {value!r}") from None
        if not 0.0 <= v <= 1.0:
            raise SamUserError(
                f"{name} must be in [0, 1], got {value!r}"
                + ("; 0 disables it" if name in ("pred_iou_thresh", "stability_score_thresh") else "")
            )


def check_grid(grid, i: int) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or not len(g) or not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
        raise SamUserError(
            f"point_grids[{i}] must be a non-empty (N, 2) array of (x, y) in [0, 1] (fractions of the crop), "
            f"got shape {g.shape}" + (f", values in [{g.min():g}, {g.max():g}]" if g.size else "")
        )
    return g
