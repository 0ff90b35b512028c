"""Automatic mask generation ("segment everything") for images, large images and stacks.

Same algorithm and parameters as the official ``SamAutomaticMaskGenerator`` (a grid of point
prompts, per-crop batches, predicted-IoU and stability filtering, box NMS within and across crops,
optional hole/island cleanup), computed differently: masks are filtered on the low-res logits
before any upsampling, and only surviving masks are upsampled, each on its own box, on the model's
device (see ``automatic.batch``). No torchvision, no OpenCV, no napari.

Coordinates: points (x, y), boxes XYWH (output records) in pixels of the original image.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from napari_sam.automatic.batch import CropContext, Masks, default_points_per_batch, process_batch
from napari_sam.automatic.merge import merge_crop_masks, paint_labels
from napari_sam.automatic.stack import link_slices, stack_labels
from napari_sam.automatic.utils import (
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    check_grid,
    check_params,
    coco_encode_rle,
    coco_mask_utils,
    generate_crop_boxes,
    mask_to_rle,
    nms,
    tile_boxes,
)
from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.progress import AUTO, Cancel, Progress, check_cancel, resolve_progress
from napari_sam.errors import SamInputWarning, SamUserError

__all__ = ["MIN_SIDE", "AutomaticMaskGenerator", "MaskRecords", "link_slices", "merge_crop_masks", "paint_labels"]


class MaskRecords(list):
    """What :meth:`AutomaticMaskGenerator.generate` returns: its list of records, and ``note``: ""
    when masks passed the thresholds, else why none did and which thresholds the model's registry
    entry recommends (the text of the ``SamInputWarning``; also ``generator.last_note``)."""

    note: str = ""


class AutomaticMaskGenerator:
    """Segment everything in an image with a grid of point prompts.

    Args (the official meaning):
        model_or_predictor: a ``Sam`` model or a ``SamPredictor`` (its device/precision are used).
        points_per_side: points along one side of the grid (points_per_side**2 prompts); None when
            ``point_grids`` is given.
        points_per_batch: prompts decoded together (memory vs speed); None: 64, or 256 on a GPU
            with 32 GiB or more (``automatic.batch.default_points_per_batch``).
        pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables).
        stability_score_thresh: keep masks whose stability score (IoU of the mask thresholded at
            ``+offset`` and ``-offset``) is >= this (0 disables).
        stability_score_offset: the logit offset of the stability score.
        box_nms_thresh: box IoU above which duplicates within a crop are removed.
        crop_n_layers: extra crop layers; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for removing duplicates across crops (smaller crops win).
        crop_overlap_ratio: overlap of the first crop layer, as a fraction of the image's short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this**i.
        point_grids: explicit (N, 2) grids in [0, 1] (x, y), one per layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this (pixels).
        output_mode: ``'binary_mask'`` ((H, W) bool), ``'uncompressed_rle'`` or ``'coco_rle'``.
    Extra:
        tile_size: if set and the image is larger, the image is processed in tiles of this side
            (each tile at full resolution, then crop layers inside each tile), overlapping by
            ``tile_overlap`` pixels; masks touching an inner tile edge are dropped (the overlap must
            exceed the largest object) and duplicates across tiles removed with ``crop_nms_thresh``.
        chunk_pixels: full-resolution logits upsampled at once (float32, 2**25 = 128 MiB): with
            ``tile_size`` this bounds the working memory whatever the image size.
        device, precision: used when a model is given (see ``SamPredictor``).
        zoom: how a crop (or tile) smaller than the model's input is embedded: None (default) resized to
            the input, as SAM's generator does, whatever the model's own scale (``nano_nuclei`` on dsb2018:
            F1@0.5 0.602 against 0.554 at its native scale, docs/automatic.md); a number (``SamPredictor``'s
            ``zoom``); ``"predictor"``: the predictor's.
    """

    def __init__(
        self,
        model_or_predictor: Any,
        points_per_side: int | None = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        tile_size: int | None = None,
        tile_overlap: int = 256,
        chunk_pixels: int = 2**25,
        device: str | torch.device | None = None,
        precision: str = "auto",
        zoom: float | None | str = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        check_params(
            points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor, tile_size,
            min_mask_region_area, chunk_pixels,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
        )
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise ValueError(f"unknown output_mode {output_mode!r}")
        if output_mode == "coco_rle":
            coco_mask_utils()  # before any work: MissingDependencyError says what to install
        if not (zoom is None or zoom == "predictor" or (isinstance(zoom, int | float) and zoom > 0)):
            raise SamUserError(f"zoom must be None (resize to the input), a positive number or 'predictor', not {zoom!r}")
        if tile_size is not None and not 0 <= tile_overlap < tile_size:
            raise ValueError("tile_overlap must be in [0, tile_size)")
        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [check_grid(g, i) for i, g in enumerate(point_grids)]
            if len(self.point_grids) < crop_n_layers + 1:
                raise SamUserError(
                    f"point_grids must hold one grid per crop layer ({crop_n_layers + 1} with "
                    f"crop_n_layers={crop_n_layers}), got {len(self.point_grids)}"
                )
        if isinstance(model_or_predictor, SamPredictor):
            self.predictor = model_or_predictor
        else:
            self.predictor = SamPredictor(model_or_predictor, device=device, precision=precision)
        if points_per_batch is None:
            points_per_batch = default_points_per_batch(self.predictor.device)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode
        self.tile_size, self.tile_overlap = tile_size, int(tile_overlap)
        self.chunk_pixels = int(chunk_pixels)
        #: scale of a crop smaller than the model's input (``SamPredictor.encode``'s ``zoom``)
        self.zoom = zoom
        #: crops encoded together (``SamPredictor.encode_batch``): 8 on a GPU, one at a time on a CPU
        self.encode_batch_size = 8 if self.predictor.device.type == "cuda" else 1
        #: after each image: "" when masks passed the thresholds, else the warning's text (why none did)
        self.last_note = ""

    # ------------------------------------------------------------------ public API
    def generate(
        self, image: np.ndarray, progress: Progress | str = AUTO, cancel: Cancel = None
    ) -> list[dict[str, Any]]:
        """Masks for ``image`` ((H, W) or (H, W, 3|4), any dtype ``to_sam_image`` takes).

        Returns records like the official: ``segmentation`` ((H, W) bool or RLE dict), ``area`` (int),
        ``bbox`` XYWH, ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``,
        ``crop_box`` XYWH, in a :class:`MaskRecords` list whose ``note`` says why it is empty when no mask
        passed the thresholds (as the ``SamInputWarning`` does). ``progress(done, total)`` is called after each embedding and each batch
        (default ``"auto"``: a terminal bar when standard error is a terminal); ``cancel`` (callable or
        ``threading.Event``) is checked as often and raises :class:`~napari_sam.errors.Cancelled`.
        """
        size, data = self.generate_masks(image, resolve_progress(progress, "segment everything"), cancel)
        out = MaskRecords()
        out.note = self.last_note
        for i in range(len(data)):
            if self.output_mode == "binary_mask":
                seg: Any = data.full(i, size)
            else:
                seg = mask_to_rle(data.full(i, size))
                seg = coco_encode_rle(seg) if self.output_mode == "coco_rle" else seg
            out.append({
                "segmentation": seg,
                "area": int(data.crops[i].sum()),
                "bbox": box_xyxy_to_xywh(data.boxes[i].tolist()),
                "predicted_iou": float(data.iou[i]),
                "point_coords": [data.points[i].tolist()],
                "stability_score": float(data.stability[i]),
                "crop_box": box_xyxy_to_xywh(data.crop_boxes[i].tolist()),
            })
        return out

    def generate_labels(
        self, image: np.ndarray, progress: Progress | str = AUTO, cancel: Cancel = None
    ) -> np.ndarray:
        """(H, W) int32 instance labels, 0 = background, ids 1..N without gaps.

        Overlaps: masks are painted from the largest to the smallest area, so a smaller mask lying on
        a larger one stays whole and the larger one keeps the rest (ties: higher predicted_iou *
        stability on top). A mask left with no visible pixel is dropped. Full-size masks are never
        built: memory is the label image plus each mask's box. ``progress``: as :meth:`generate`.
        """
        size, data = self.generate_masks(image, resolve_progress(progress, "segment everything"), cancel)
        return paint_labels(data, size)

    def generate_labels_stack(
        self,
        volume: Any,
        axis: int = 0,
        min_iou: float = 0.5,
        rgb: bool | None = None,
        progress: Progress | str = AUTO,
        cancel: Cancel = None,
    ) -> np.ndarray:
        """Per-slice labels of a stack or time series, linked into consistent ids across slices.

        ``volume``: array-like (numpy, dask, zarr) with the slices along ``axis`` and, if ``rgb``
        (None: last axis of size 3/4 on a 4D array), channels last. Each slice is segmented with
        :meth:`generate_labels`; objects are then matched to the previous slice one-to-one
        (Hungarian assignment on mask IoU, pairs with IoU >= ``min_iou``), a matched object keeps the
        id of its partner and an unmatched one gets a new id (see :func:`link_slices`).
        Returns int32 labels shaped like the volume without its channel axis. ``progress`` counts slices.
        """
        def one_slice(image: np.ndarray, cancel: Cancel = None) -> np.ndarray:
            return self.generate_labels(image, progress=None, cancel=cancel)

        progress = resolve_progress(progress, "segment everything (stack)")
        return stack_labels(one_slice, volume, axis, min_iou, rgb, progress, cancel)

    # ------------------------------------------------------------------ the pipeline
    def crop_boxes(self, size: tuple[int, int]) -> tuple[list[list[int]], list[int]]:
        """Crop boxes XYXY (exclusive end) and their layer index, for an (H, W) image."""
        boxes, layers = [], []
        for b, lay in self.tile_crops(size):
            boxes += b
            layers += lay
        return boxes, layers

    def tile_crops(self, size: tuple[int, int]) -> list[tuple[list[list[int]], list[int]]]:
        """The crop boxes and layers of :meth:`crop_boxes`, grouped by tile (one group when not tiled).

        Each crop is computed on its own (:meth:`crop_masks`), so a tile's crops can run anywhere (the
        batch runs one task per tile) and :func:`merge_crop_masks` of all of them, in this order, is
        :meth:`generate_masks`' result."""
        h, w = size
        if self.tile_size is None or max(h, w) <= self.tile_size:
            return [generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)]
        groups = []
        for tx0, ty0, tx1, ty1 in tile_boxes(size, self.tile_size, self.tile_overlap):
            b, lay = generate_crop_boxes((ty1 - ty0, tx1 - tx0), self.crop_n_layers, self.crop_overlap_ratio)
            groups.append(([[x0 + tx0, y0 + ty0, x1 + tx0, y1 + ty0] for x0, y0, x1, y1 in b], lay))
        return groups

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """``image`` as the model takes it ((H, W, 3) uint8, ``to_sam_image``), checked to be large enough."""
        img = to_sam_image(image)
        if min(img.shape[:2]) < MIN_SIDE:
            raise SamUserError(
                f"automatic masks need an image of at least {MIN_SIDE} x {MIN_SIDE} pixels, got {img.shape[0]} x "
                f"{img.shape[1]} (H x W); segment it with prompts (SamPredictor.predict) or pass a larger image"
            )
        return img

    def generate_masks(
        self, image: np.ndarray, progress: Progress = None, cancel: Cancel = None
    ) -> tuple[tuple[int, int], Masks]:
        """((H, W), the kept masks as :class:`Masks`) before formatting; see :meth:`generate`."""
        img = self.prepare(image)
        size = (int(img.shape[0]), int(img.shape[1]))
        boxes, layers = self.crop_boxes(size)
        data = merge_crop_masks(
            self.crop_masks(img, boxes, layers, progress, cancel), size, self.crop_nms_thresh,
            self.min_mask_region_area, self.box_nms_thresh,
        )
        self.last_note = "" if len(data) else self._warn_nothing_passed()
        return size, data

    def crop_masks(
        self, img: np.ndarray, boxes: list[list[int]], layers: list[int], progress: Progress = None,
        cancel: Cancel = None,
    ) -> list[Masks]:
        """The masks of each crop ``boxes[k]`` (XYXY, exclusive end, layer ``layers[k]``) of the prepared
        (H, W, 3) ``img``, filtered and de-duplicated within the crop, with their crops made."""
        size = (int(img.shape[0]), int(img.shape[1]))
        n_batches = [-(-len(self.point_grids[k]) // self.points_per_batch) for k in layers]
        total, done = sum(n_batches) + len(boxes), 0
        parts = []
        group = self.encode_batch_size
        embs: list = []
        for k, (box, layer) in enumerate(zip(boxes, layers, strict=True)):
            check_cancel(cancel)
            x0, y0, x1, y1 = box
            if k % group == 0:
                crops = [img[b[1] : b[3], b[0] : b[2]] for b in boxes[k : k + group]]
                embs = self.predictor.encode_batch(crops, batch_size=group, zoom=self.zoom)
            emb = embs[k % group]
            m = self.predictor.model
            ctx = CropContext(
                self.predictor, emb.features, emb.input_size, box,
                m.mask_threshold, self.stability_score_offset, self.chunk_pixels, emb.high_res,
            )
            ctx.pe = self.predictor.dense_pe
            done += 1
            if progress is not None:
                progress(done, total)
            pts = self.point_grids[layer] * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
            crop_parts = []
            for b in range(0, len(pts), self.points_per_batch):
                check_cancel(cancel)
                crop_parts.append(process_batch(self, ctx, pts[b : b + self.points_per_batch], size))
                done += 1
                if progress is not None:
                    progress(done, total)
            data = Masks.cat(crop_parts)
            data = data.select(nms(data.boxes.float(), data.iou, self.box_nms_thresh))
            parts.append(ctx.with_crops(data))
        return parts

    def _warn_nothing_passed(self) -> str:
        """One ``SamInputWarning`` naming the thresholds used and the model's registry defaults; its text."""
        used = {
            "pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh,
            "box_nms_thresh": self.box_nms_thresh,
        }
        name = getattr(self.predictor.model, "model_name", None)
        hint = "lower pred_iou_thresh and stability_score_thresh (0 disables each)"
        if isinstance(name, str) and name:
            from napari_sam.weights.registry import REGISTRY, automatic_defaults  # data only, no cycle

            if name in REGISTRY:
                rec = automatic_defaults(name)
                if any(abs(rec[k] - used[k]) > 1e-9 for k in rec):
                    hint = (
                        f"the registry recommends for {name!r}: {_fmt(rec)} "
                        f"(AutomaticMaskGenerator(model, **napari_sam.weights.registry.automatic_defaults({name!r})))"
                    )
                else:
                    hint = f"these are the registry's values for {name!r}; {hint}"
        note = (
            f"no mask passed the thresholds ({_fmt(used)}, stability_score_offset={self.stability_score_offset:g}"
            f"{f', min_mask_region_area={self.min_mask_region_area}' if self.min_mask_region_area else ''}); {hint}"
        )
        warnings.warn(note, SamInputWarning, stacklevel=4)
        return note


#: the smallest side (pixels) of an image :class:`AutomaticMaskGenerator` segments: below it every grid
#: point of a 32 x 32 grid falls on the same few pixels and the thousands of identical masks cost a minute
MIN_SIDE = 8


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in values.items())
