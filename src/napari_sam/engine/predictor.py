"""Image -> embedding -> prompts -> masks, with SAM's exact pre- and post-processing.

``SamPredictor`` follows the official ``segment_anything.SamPredictor`` (same inputs, same outputs,
same numbers in fp32) and adds: embeddings as values (``compute_embedding`` /
``set_image_embedding``), many objects in one decoder call (``predict_batch``), a device and
precision choice, and a lean post-processing (only the rows/columns that survive the crop are
upsampled, and no work is done twice). Prompts are SAM's: points (x, y), boxes (x0, y0, x1, y1),
in pixels of the original image.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from napari_sam.engine.chunks import decode_chunked, iter_chunks
from napari_sam.engine.device import autocast_dtype, pick_device
from napari_sam.engine.embedding import DecoderPreparation, ImageEmbedding, check_embedding, tensor_bytes
from napari_sam.engine.graph_clicks import GraphClicks, flat_high_res
from napari_sam.engine.graphs import GraphCache
from napari_sam.engine.model_interface import decode, encode_images, img_size
from napari_sam.engine.postprocess import MaskUpsampler
from napari_sam.engine.progress import Cancel, Progress
from napari_sam.engine.prompts import prompt_tensors
from napari_sam.engine.transforms import SquareResize, make_transform, model_zoom
from napari_sam.models.common import weights_key
from napari_sam.models.fast import fast_decoder, mask_update, resolve_decoder_path

log = logging.getLogger(__name__)

# The fast decoder's per-image preparation (``FastMaskDecoder.prepare_image``) costs less than one plain
# prompt and saves a quarter to two fifths of each later one (``bench/bench_prepare.py``; figures in
# docs/engine.md, "Per image, once"), so an image is prepared on its second prompt call, or on the
# first when that has this many prompts: a single small call per image (a volume's propagation
# step, a tile's first click) stays on the plain path.
PREPARE_FOR_PROMPTS = 3


class SamPredictor(GraphClicks):
    """Compute an image embedding once, then predict masks for many prompts.

    Args:
        model: a ``Sam`` (``napari_sam.models.sam``) or anything with the same interface, or a
            registry name or checkpoint path (loaded with ``napari_sam.load_model``).
        device: None picks cuda > mps > cpu (``napari_sam.engine.device.pick_device``); the model is moved there.
        precision: ``'auto'`` (bf16 autocast for the encoder on CUDA, fp32 elsewhere), ``'fp32'``,
            ``'bf16'`` or ``'fp16'``. Only the image encoder runs under autocast; the features are
            stored as float32 and the prompt encoder and mask decoder always run in fp32.
        decoder: which mask decoder computes the masks (the same numbers up to float rounding):
            ``'plain'``, the reference-shaped modules (``napari_sam.models.mask_decoder``), or
            ``'fast'``, the CPU fast path (``napari_sam.models.fast``: the image's first layer
            prepared once, mask prompts as low-rank updates); ``'auto'``: fast on a CPU, plain
            elsewhere. The choice is :attr:`decoder_path` (and a debug log line).
        cuda_graphs: replay the plain path's clicks (prompt encoder, decoder, mask resize) from
            CUDA graphs, one per prompt shape and image size (``napari_sam.engine.graphs``); None: on
            CUDA with the plain decoder. :meth:`set_image` and :meth:`prepare_embedding` capture
            an image's first click (one point, multimask) ahead.
    """

    def __init__(
        self,
        model: torch.nn.Module | str,
        device: str | torch.device | None = None,
        precision: str = "auto",
        decoder: str = "auto",
        cuda_graphs: bool | None = None,
        zoom: float | None | str = "model",
    ):
        self.device = pick_device(device)
        if not isinstance(model, torch.nn.Module):  # a registry name or path (weights imports the engine)
            from napari_sam.weights.loading import as_model

            model = as_model(model, self.device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.model = model.to(self.device).eval()
        #: how images smaller than the model's input are embedded (``transforms.zoomed_shape``): None
        #: enlarged to fill it (SAM's resize), a number scaled by it and zero-padded (1: at their own
        #: pixel scale); ``"model"``: the model's ``preprocessing.zoom`` (the scale it was trained at)
        self.zoom = model_zoom(self.model) if zoom == "model" else zoom
        #: ``"plain"`` or ``"fast"``: the mask decoder this predictor runs (see ``decoder``)
        self.decoder_path = resolve_decoder_path(decoder, self.device, self.model.mask_decoder)
        self._fast = fast_decoder(self.model.mask_decoder) if self.decoder_path == "fast" else None
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and self.decoder_path == "plain"
        if cuda_graphs and self.decoder_path != "plain":
            raise ValueError("cuda_graphs=True needs the plain decoder (decoder='plain')")
        self._graphs = GraphCache(capture=self.device.type == "cuda") if cuda_graphs else None
        log.debug(
            "SamPredictor on %s: %s mask decoder (decoder=%r), CUDA graphs %s",
            self.device, self.decoder_path, decoder, "on" if self._graphs is not None and self._graphs.capture else "off",
        )
        self.img_size = img_size(model)
        # the model's own resize (SAM: PIL bilinear; LiteMedSAM: area; SAM 2: square), models.sam.Preprocessing
        self.transform = make_transform(model)
        grid = tuple(int(s) for s in model.prompt_encoder.image_embedding_size)
        self.embedding_size: tuple[int, int] = (grid[0], grid[1])
        self.mask_input_size: tuple[int, int] = (4 * grid[0], 4 * grid[1])
        self._embedding: ImageEmbedding | None = None
        self._dense_pe: torch.Tensor | None = None
        self._prepared = None  # the decoder's per-image work (MaskDecoder.prepare_image), see predict_torch
        self._calls = 0  # prompt calls on the current image
        self._upsampler = MaskUpsampler(self.img_size)
        # SAM 2 stretches the image to its square input: its logits go straight to the image's size
        self._direct_upsampler = MaskUpsampler(self.mask_input_size[0]) if isinstance(self.transform, SquareResize) else None
        #: SAM 2 clamps the low-res logits it returns to [-limit, limit] (after upsampling the masks)
        self.low_res_limit: float | None = getattr(model, "low_res_limit", None)

    # ------------------------------------------------------------------ image / embedding state
    def compute_embedding(
        self, image: np.ndarray, image_format: str = "RGB", contrast_limits=None, native: bool = False,
        zoom: float | None | str = "predictor",
    ) -> ImageEmbedding:
        """Embed ``image`` ((H, W) or (H, W, 3|4), any dtype ``to_sam_image`` takes); the state is unchanged.

        ``native=True`` embeds the image at its own scale (only zero-padded to the model's input, not
        resized; both sides must be at most ``img_size``): how ``napari_sam.engine.tiling`` embeds its tiles.
        ``zoom``: None (the longest side to ``img_size``), a scale for images smaller than the input
        (zero-padded, see :attr:`zoom`), or ``"predictor"``: this predictor's :attr:`zoom`.
        """
        return self.encode_batch([image], image_format, contrast_limits, native, zoom=zoom)[0]

    def encode_batch(
        self,
        images: Sequence[np.ndarray],
        image_format: str = "RGB",
        contrast_limits=None,
        native: bool = False,
        batch_size: int = 8,
        zoom: float | None | str = "predictor",
    ) -> list[ImageEmbedding]:
        """:meth:`compute_embedding` of several images, the encoder run on up to ``batch_size`` of
        them at once: a GPU's throughput (stack slices, crops, tiles, batch jobs); the same
        embeddings as one at a time. The state is unchanged."""
        zoom = self.zoom if zoom == "predictor" else zoom
        return encode_images(self.model, self.transform, self.device, self.autocast_dtype, images, image_format,
                             contrast_limits, native, zoom, batch_size)

    def set_image(self, image: np.ndarray, image_format: str = "RGB", contrast_limits=None) -> None:
        """Compute and keep the embedding of ``image`` (see :meth:`compute_embedding`), and
        :meth:`prepare` the decoder for it (a few ms next to the encoder's seconds)."""
        self.set_image_embedding(self.compute_embedding(image, image_format, contrast_limits))
        self.prepare()
        self._warm_first_click(self._embedding)

    def prepare(self) -> None:
        """Do the fast decoder's prompt-independent work for the current image now
        (``FastMaskDecoder.prepare_image``; nothing on the plain path, or when already done).

        :meth:`set_image` calls it; after :meth:`set_image_embedding` the predictor does it itself
        on the image's second prompt call, or on the first of ``PREPARE_FOR_PROMPTS`` prompts or
        more (unless the embedding came with it, :meth:`prepare_embedding`): call it to have the
        first click of an image set that way on the prepared image too."""
        emb = self._require_image()
        if self._prepared is None and self._fast is not None:
            self._prepared = self._preparation(emb.features)

    def _preparation(self, features: torch.Tensor) -> Any:
        """``FastMaskDecoder.prepare_image`` of ``features (1, C, h, w)`` (no state changed)."""
        with torch.inference_mode():
            _, dense = self.model.prompt_encoder(points=None, boxes=None, masks=None)  # the no-mask prompt
            return self._fast.prepare_image(features, self.dense_pe, dense)

    def prepare_embedding(self, emb: ImageEmbedding) -> ImageEmbedding:
        """``emb`` with the decoder's per-image work done and kept with it (its ``prepared``), so
        that the first prompt on it after :meth:`set_image_embedding` is decoded on the prepared
        image, as the later ones are. For a caller that encodes ahead, e.g. in a worker thread
        (this predictor's state is not changed; ~20-30 ms for SAM on a 2-core CPU, and about 6x
        the features' memory while kept: ``emb.prepared.nbytes``). Returns ``emb`` itself on the
        plain decoder path or for an embedding already prepared for this decoder."""
        decoder = self.model.mask_decoder
        check_embedding(emb, self.embedding_size, self.img_size)
        self._warm_first_click(emb)
        if self._fast is None or (emb.prepared is not None and emb.prepared.fits(decoder)):
            return emb
        emb = emb.to(self.device)
        value = self._preparation(emb.features)
        prep = DecoderPreparation(weakref.ref(decoder), weights_key(decoder), value, tensor_bytes(value))
        return replace(emb, prepared=prep)

    def set_image_embedding(self, emb: ImageEmbedding) -> None:
        """Use a previously computed embedding (moved to this predictor's device), with its
        decoder preparation when it has one made for this predictor's decoder and weights."""
        check_embedding(emb, self.embedding_size, self.img_size)
        self._embedding = emb.to(self.device)
        prep = self._embedding.prepared
        self._prepared = prep.value if prep is not None and prep.fits(self.model.mask_decoder) else None
        self._calls = 0

    def reset_image(self) -> None:
        """Forget the current image."""
        self._embedding = None
        self._prepared = None
        self._calls = 0

    @property
    def embedding(self) -> ImageEmbedding | None:
        return self._embedding

    @property
    def dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) positional encoding of the embedding grid: the model's, the same for every
        image (and tile, and crop), so computed once."""
        if self._dense_pe is None:
            with torch.no_grad():  # not an inference tensor: usable outside inference mode too
                self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        return self._dense_pe

    @property
    def fast_decoder(self):
        """The CPU fast path's decoder (``napari_sam.models.fast.FastMaskDecoder``) this predictor
        runs, or None on the plain path (:attr:`decoder_path`)."""
        return self._fast

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def features(self) -> torch.Tensor | None:
        return None if self._embedding is None else self._embedding.features

    @property
    def original_size(self) -> tuple[int, int] | None:
        return None if self._embedding is None else self._embedding.original_size

    @property
    def input_size(self) -> tuple[int, int] | None:
        return None if self._embedding is None else self._embedding.input_size

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, C, h, w) features of the current image."""
        return self._require_image().features

    def _require_image(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError(
                "no image is set: call .set_image(image) or .set_image_embedding(embedding) before predicting"
            )
        return self._embedding

    # ------------------------------------------------------------------ prompts
    def _prompts(self, coords, labels, boxes, mask_input, batch: bool):
        """Validate numpy prompts and move them to model-input coordinates as tensors with batch dim."""
        emb = self._require_image()
        return prompt_tensors(coords, labels, boxes, mask_input, batch, emb, self.transform, self.mask_input_size, self.device)

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Masks for one object, exactly like the official ``SamPredictor.predict``.

        Args:
            point_coords: (N, 2) (x, y) pixels of the original image, or None.
            point_labels: (N,) 1 positive, 0 negative; required with ``point_coords``.
            box: (4,) (x0, y0, x1, y1) pixels, or None.
            mask_input: (1, 256, 256) low-res logits from a previous prediction, or None.
            multimask_output: three masks (C=3) instead of one (C=1).
            return_logits: return float logits instead of bool masks.

        Returns:
            masks (C, H, W) bool (float32 logits with ``return_logits``), scores (C,) float32,
            low_res_logits (C, 256, 256) float32; numpy arrays.
        """
        c, lab, b, m = self._prompts(point_coords, point_labels, box, mask_input, batch=False)
        masks, scores, low = self.predict_torch(c, lab, b, m, multimask_output, return_logits)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), low[0].float().cpu().numpy()

    def predict_batch(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = False,
        return_logits: bool = False,
        progress: Progress = None,
        cancel: Cancel = None,
        chunk_size: int | None = None,
    ):
        """Masks for B objects (same image), decoded ``chunk_size`` (default ``DECODE_CHUNK``) at a time.

        Args:
            point_coords: (B, N, 2) (x, y) pixels (pad with label -1), or None.
            point_labels: (B, N), required with ``point_coords``.
            boxes: (B, 4) (x0, y0, x1, y1) pixels, or None.
            mask_input: (B, 1, 256, 256) low-res logits, or None.
            progress, cancel: ``progress(done, total)`` objects after each chunk; ``cancel`` (callable or
                Event) raises ``Cancelled`` between chunks (``napari_sam.engine.progress``).

        Returns:
            masks (B, C, H, W) bool, scores (B, C) float32, low_res_logits (B, C, 256, 256); numpy.
            ``TooMuchWorkError`` before any work when these would exceed ``chunks.MAX_BATCH_OUTPUT_BYTES``
            (use :meth:`iter_predict_batch`).
        """
        prompts, n = self._batch_prompts(point_coords, point_labels, boxes, mask_input)
        return decode_chunked(self.predict_torch, prompts, n, multimask_output, return_logits,
                              self._embedding.original_size, self.mask_input_size, chunk_size, progress, cancel)

    def iter_predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                           multimask_output: bool = False, return_logits: bool = False, progress: Progress = None,
                           cancel: Cancel = None, chunk_size: int | None = None):
        """:meth:`predict_batch` as a generator of ``(start, masks, scores, low_res)`` per chunk of objects
        ``start:start + len(masks)``: memory bounded by one chunk, however many objects."""
        prompts, n = self._batch_prompts(point_coords, point_labels, boxes, mask_input)
        return iter_chunks(self.predict_torch, prompts, n, multimask_output, return_logits, chunk_size, progress, cancel)

    def _batch_prompts(self, coords, labels, boxes, mask_input):
        c, lab, b, m = self._prompts(coords, labels, boxes, mask_input, batch=True)
        return (c, lab, b, m), next((t.shape[0] for t in (c, b, m) if t is not None), 1)  # none: one object

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Like the official ``predict_torch``: prompts already in model-input coordinates.

        Args: point_coords (B, N, 2) (x, y), point_labels (B, N), boxes (B, 4), mask_input
        (B, 1, 256, 256), tensors on ``self.device``.
        Returns: masks (B, C, H, W) bool (or logits), iou scores (B, C), low-res logits (B, C, 256, 256).
        """
        emb = self._require_image()
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        points = (point_coords, point_labels) if point_coords is not None else None
        with torch.inference_mode():
            if self._graphs is not None:
                inputs = (emb.features, *flat_high_res(emb.high_res), point_coords, point_labels, boxes, mask_input)
                key, fn = self._graph_call(emb, inputs, multimask_output, return_logits)
                low_res, iou, masks = self._graphs(key, fn, inputs)
                return masks, iou, low_res
            decode = self._decode_fast if self._fast is not None else self._decode_plain
            low_res, iou = decode(emb, points, boxes, mask_input, multimask_output)
            masks = self.postprocess_masks(low_res, emb.input_size, emb.original_size, return_logits)
        if self.low_res_limit is not None:
            low_res = low_res.clamp(-self.low_res_limit, self.low_res_limit)
        return masks, iou, low_res

    def _decode_plain(self, emb: ImageEmbedding, points, boxes, mask_input, multimask_output: bool):
        """Prompts -> low-res logits ``(B, C, 256, 256)`` and IoUs ``(B, C)`` with the plain modules
        (the model's ``decode``: SAM's prompt encoder and mask decoder, or SAM 2's)."""
        return decode(self.model, emb.features, self.dense_pe, points, boxes, mask_input, multimask_output, emb.high_res)

    def _decode_fast(self, emb: ImageEmbedding, points, boxes, mask_input, multimask_output: bool):
        """As :meth:`_decode_plain`, on the fast path: the image prepared once (on its second prompt
        call, or the first of ``PREPARE_FOR_PROMPTS`` prompts or more), mask prompts as low-rank
        changes of it when the points/boxes give one prompt per mask (masks alone: unprepared)."""
        encoder = self.model.prompt_encoder
        n = len(points[0]) if points is not None else len(boxes) if boxes is not None else 1
        use_prepared = self._prepared is not None or self._calls > 0 or n >= PREPARE_FOR_PROMPTS
        self._calls += 1
        low_rank = use_prepared and mask_input is not None and len(mask_input) == n
        sparse, dense = encoder(points=points, boxes=boxes, masks=None if low_rank else mask_input)
        extra = {}
        if use_prepared and (mask_input is None or low_rank):
            self.prepare()
            extra["prepared"] = self._prepared
            if low_rank:
                extra["dense_update"] = mask_update(encoder, mask_input)
        return self._fast(emb.features, self.dense_pe, sparse, dense, multimask_output, **extra)

    def postprocess_masks(
        self,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        return_logits: bool = False,
    ) -> torch.Tensor:
        """(B, C, 256, 256) logits -> (B, C, H, W) masks (bool, or logits), as the official.

        Same numbers as upsampling to (img_size, img_size), cropping to ``input_size`` and
        upsampling to ``original_size`` (bilinear, align_corners=False), but only the low-res
        rows/columns that reach the crop are upsampled, and an identity resize is skipped.
        """
        threshold = None if return_logits else self.model.mask_threshold
        if self._direct_upsampler is not None and tuple(input_size) == (self.img_size, self.img_size):
            # SAM 2: the 256x256 logits straight to the image's size (its input was stretched, not padded)
            return self._direct_upsampler(low_res, self.mask_input_size, original_size, threshold)
        return self._upsampler(low_res, input_size, original_size, threshold)
