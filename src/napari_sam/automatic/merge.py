"""Merging the masks of an image's crops or tiles into one set, and painting them as labels.

Model-free steps of automatic masks (``AutomaticMaskGenerator.generate_masks`` uses them; the batch
runner merges the masks of a large image's tiles, computed as separate tasks, with the same code
where it writes the labels): duplicates across crops removed, SAM's optional hole/island cleanup, and
the (H, W) label image.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.automatic.batch import Masks
from napari_sam.automatic.utils import box_area, fill_holes_with_outside, nms, remove_small_regions

__all__ = ["merge_crop_masks", "paint_labels", "remove_small_mask_regions"]


def merge_crop_masks(
    parts: list[Masks], size: tuple[int, int], crop_nms_thresh: float, min_mask_region_area: int,
    box_nms_thresh: float,
) -> Masks:
    """The masks of all crops (:meth:`AutomaticMaskGenerator.crop_masks`, in ``crop_boxes`` order) of an
    (H, W) image: duplicates across crops removed (smaller crops win), then the optional hole/island
    cleanup; the generator's parameters of those names. Needs no model: the batch merges the masks of a
    large image's tiles where it writes the labels."""
    data = Masks.cat(parts)
    if len(parts) > 1 and len(data):  # duplicates across crops: prefer masks from smaller crops
        data = data.select(nms(data.boxes.float(), 1 / box_area(data.crop_boxes.float()), crop_nms_thresh))
    if min_mask_region_area > 0 and len(data):
        data = remove_small_mask_regions(data, size, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh))
    return data


def remove_small_mask_regions(data: Masks, size: tuple[int, int], area: int, nms_thresh: float) -> Masks:
    """Official post-processing: fill holes and drop islands under ``area`` pixels, re-run NMS at
    ``nms_thresh`` (changed masks lose)."""
    h, w = size
    crops, boxes, scores = [], [], []
    for i in range(len(data)):
        x0, y0, x1, y1 = data.boxes[i].tolist()
        m = data.crops[i].cpu().numpy()
        touch = (x0 == 0, y0 == 0, x1 == w - 1, y1 == h - 1)
        whole = (touch[0] and touch[2]) or (touch[1] and touch[3]) or h * w - m.size < area
        if whole:  # the background outside the box may be small or split: work on the full image
            m, (x0, y0) = data.full(i, size), (0, 0)
            m, ch1 = remove_small_regions(m, area, "holes")
        else:  # pad with a ring of outside background where the box is not on the image border
            pad = ((0 if touch[1] else 1, 0 if touch[3] else 1), (0 if touch[0] else 1, 0 if touch[2] else 1))
            p = np.pad(m, pad)
            ring = np.zeros_like(p)
            ring[: pad[0][0]], ring[p.shape[0] - pad[0][1] :] = True, True
            ring[:, : pad[1][0]], ring[:, p.shape[1] - pad[1][1] :] = True, True
            q, ch1 = fill_holes_with_outside(p, ring, area)
            m = q[pad[0][0] : p.shape[0] - pad[0][1], pad[1][0] : p.shape[1] - pad[1][1]]
        m, ch2 = remove_small_regions(m, area, "islands")
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            box = [x0 + cols[0], y0 + rows[0], x0 + cols[-1], y0 + rows[-1]]
            m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        else:
            box, m = [0, 0, 0, 0], m[:0, :0]
        crops.append(torch.as_tensor(np.ascontiguousarray(m)))
        boxes.append(box)
        scores.append(0.0 if (ch1 or ch2) else 1.0)
    new = Masks(data.iou, data.stability, torch.tensor(boxes, dtype=torch.long), data.points, data.crop_boxes, crops)
    return new.select(nms(new.boxes.float(), torch.tensor(scores), nms_thresh))


def paint_labels(data: Masks, size: tuple[int, int]) -> np.ndarray:
    """Paint masks into (H, W) int32 labels: largest area first, smaller on top; ids 1..N in painting order."""
    labels = np.zeros(size, dtype=np.int32)
    if not len(data):
        return labels
    areas = np.array([int(c.sum()) for c in data.crops], dtype=np.float64)
    quality = (data.iou * data.stability).double().numpy()
    order = np.lexsort((quality, -areas))  # by area descending, then quality ascending (best on top)
    for k, i in enumerate(order, start=1):
        x0, y0, x1, y1 = data.boxes[i].tolist()
        if data.crops[i].numel():
            view = labels[y0 : y1 + 1, x0 : x1 + 1]
            view[data.crops[i].cpu().numpy()] = k
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)
