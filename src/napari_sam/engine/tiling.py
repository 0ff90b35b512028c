"""Tiled embeddings: a large image segmented at its own resolution.

A model sees ``img_size`` px a side (512 for ``nano_nuclei``, 1024 for SAM). ``SamPredictor``
shrinks a larger image to that, so the nuclei of a 1040 x 1388 or 2048 x 2048 micrograph become a
few pixels in the model's frame. ``TiledPredictor`` embeds such an image in overlapping
``img_size`` tiles at its own scale, plus one whole-image "overview" embedding (``SamPredictor``'s),
and decodes each object in the tile where its prompts lie farthest from an inner tile edge; an
object whose prompts no tile holds with a margin (one larger than a tile) is decoded on the
overview. An image that fits in one tile is handled exactly as by ``SamPredictor``.

The API is ``SamPredictor``'s (``compute_embedding``, ``set_image``, ``set_image_embedding``,
``predict``, ``predict_batch``; points (x, y) and boxes (x0, y0, x1, y1) in pixels of the image).
One difference on a tiled image: the low-res logits, the ``mask_input`` of a refinement, form an
image-wide grid (:mod:`napari_sam.engine.tile_grid`), (C, ceil(H / c), ceil(W / c)) with c = img_size / 256 px per cell (2 for nano,
4 for SAM), so a refinement may move to another tile; cells the decode did not cover hold
``OUTSIDE_LOGIT``, as do the logits (``return_logits=True``) outside the object's tile.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.engine.chunks import check_output_size, fit_chunk
from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor
from napari_sam.engine.progress import Cancel, Progress, check_cancel
from napari_sam.engine.prompts import as_numbers, check_boxes, check_finite, check_labels, warn_outside
from napari_sam.engine.tile_grid import OUTSIDE_LOGIT, grid_shape, grid_to_tile, tile_to_grid
from napari_sam.errors import SamInputWarning, SamUserError, TooMuchWorkError

MAX_TILE_ENCODINGS = 500
"""``TiledPredictor`` refuses images that need more encoder runs than this (``max_encodings``): a
20000 x 20000 image is 2705 runs with nano_nuclei, 677 with SAM."""



def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def tile_origins(length: int, tile: int, overlap: int, step: int = 1) -> list[int]:
    """Start offsets of the fewest tiles of ``tile`` px that cover ``length`` px with neighbours
    sharing ``overlap`` px, spread evenly. With ``step`` > 1 the offsets are multiples of ``step``
    (the overlap may then be up to ``step`` px less, and the last tile may reach past the end by
    less than ``step``). ``[0]`` when one tile covers it. Also the tiles of automatic masks."""
    if length <= tile:
        return [0]
    k = math.ceil((length - overlap) / (tile - overlap))
    spacing = (length - tile) / (k - 1)
    starts = [round(i * spacing / step) * step for i in range(k - 1)]
    return starts + [-(-(length - tile) // step) * step]


@dataclass
class TiledEmbedding:
    """The embeddings of one large image.

    Attributes:
        tiles: one ``ImageEmbedding`` per tile, at the image's own scale (``input_size ==
            original_size`` == the tile's (h, w), at most img_size a side).
        origins: (row, col) of each tile's top-left pixel in the image.
        overview: the whole image's embedding (resized to the model's input, as ``SamPredictor``).
        original_size: (H, W) of the image.
    """

    tiles: list[ImageEmbedding]
    origins: list[tuple[int, int]]
    overview: ImageEmbedding
    original_size: tuple[int, int]

    def to(self, device: str | torch.device) -> TiledEmbedding:
        """A copy whose features live on ``device``."""
        return TiledEmbedding([t.to(device) for t in self.tiles], list(self.origins),
                              self.overview.to(device), self.original_size)

    @property
    def nbytes(self) -> int:
        """Memory held by all features, in bytes."""
        return self.overview.nbytes + sum(t.nbytes for t in self.tiles)


class TiledPredictor:
    """``SamPredictor`` for images larger than the model's input, at their own resolution.

    Args:
        model: a ``Sam``, or a ``SamPredictor`` to wrap (its device and precision are used).
        overlap: px shared by neighbouring tiles (default img_size / 4: 128 for nano, 256 for SAM),
            rounded down to the low-res cell; a point prompt is decoded in a tile only when it lies
            at least overlap / 2 px from the tile's inner edges, a box when overlap / 8 px.
        device, precision: as ``SamPredictor`` (ignored when ``model`` is a predictor).
        max_encodings: an image needing more encoder runs (tiles + overview) is refused with
            ``TooMuchWorkError`` after the overview, whose time gives the estimate; None: no limit.
    """

    def __init__(self, model, overlap: int | None = None, device=None, precision: str = "auto",
                 max_encodings: int | None = MAX_TILE_ENCODINGS):
        p = model if isinstance(model, SamPredictor) else SamPredictor(model, device=device, precision=precision)
        self.predictor = p
        self.model, self.device, self.precision = p.model, p.device, p.precision
        self.img_size, self.mask_input_size = p.img_size, p.mask_input_size
        self.cell = p.img_size // p.mask_input_size[0]  # image px per low-res cell of a tile
        #: tiles encoded together (``SamPredictor.encode_batch``): 8 on a GPU, one at a time on a CPU
        self.encode_batch_size = 8 if p.device.type == "cuda" else 1
        overlap = p.img_size // 4 if overlap is None else int(overlap)
        if not 0 <= overlap <= p.img_size // 2:
            raise SamUserError(f"overlap must be within 0 ... {p.img_size // 2} px (half a tile), got {overlap}")
        self.overlap = overlap // self.cell * self.cell
        self.max_encodings = max_encodings
        self._embedding: ImageEmbedding | TiledEmbedding | None = None
        self._current: int | None = None  # which embedding the inner predictor holds: tile index, -1 overview

    # ------------------------------------------------------------------ image / embedding state
    def encodings(self, shape: tuple[int, ...]) -> int:
        """How many encoder runs an image of ``shape`` ((H, W, ...)) takes: its tiles and the
        overview, or 1 when it fits in one tile."""
        h, w = int(shape[0]), int(shape[1])
        if max(h, w) <= self.img_size:
            return 1
        rows = tile_origins(h, self.img_size, self.overlap, self.cell)
        return 1 + len(rows) * len(tile_origins(w, self.img_size, self.overlap, self.cell))

    def iter_embedding(self, image: np.ndarray, image_format: str = "RGB", contrast_limits=None):
        """:meth:`compute_embedding` as a generator: yields ``(done, total)`` encoder runs after the
        overview and after each tile (``total`` = :meth:`encodings`), returns the embedding
        (``StopIteration.value``; ``yield from`` gives it). For progress bars."""
        img = to_sam_image(image, contrast_limits=contrast_limits)
        p, size = self.predictor, self.img_size
        total = self.encodings(img.shape)
        t0 = time.perf_counter()
        overview = p.compute_embedding(img, image_format)
        self._check_encodings(img.shape, total, time.perf_counter() - t0)
        yield 1, total
        h, w = img.shape[:2]
        if total == 1:
            return overview
        origins = [(r, c) for r in tile_origins(h, size, self.overlap, self.cell)
                   for c in tile_origins(w, size, self.overlap, self.cell)]
        group = self.encode_batch_size
        tiles = []
        for k in range(0, len(origins), group):
            crops = [img[r : r + size, c : c + size] for r, c in origins[k : k + group]]
            tiles += p.encode_batch(crops, image_format, native=True, batch_size=group)
            yield 1 + len(tiles), total
        return TiledEmbedding(tiles, origins, overview, (int(h), int(w)))

    def _check_encodings(self, shape: tuple[int, ...], total: int, seconds: float) -> None:
        """``TooMuchWorkError`` when ``total`` encoder runs exceed ``max_encodings`` (one run took ``seconds``)."""
        if self.max_encodings is None or total <= self.max_encodings:
            return
        est = total * seconds
        raise TooMuchWorkError(
            f"tiles at full resolution: this {shape[0]}x{shape[1]} image needs {total} encoder runs "
            f"({total - 1} tiles of {self.img_size} px + the overview), about {_duration(est)} at the "
            f"{seconds:.2f} s the overview took on {self.device}; the limit is {self.max_encodings} "
            f"(max_encodings). Switch tiles off (the image is then shrunk to the model's input), segment "
            f"a crop, or raise the limit (TiledPredictor(max_encodings=None); in napari: "
            f"sam.max_tile_encodings = {total}) to go ahead",
            count=total, estimate=est,
        )

    def compute_embedding(self, image: np.ndarray, image_format: str = "RGB",
                          contrast_limits=None) -> ImageEmbedding | TiledEmbedding:
        """Embed ``image`` ((H, W) or (H, W, 3|4), any dtype): an ``ImageEmbedding`` when it fits in
        one tile, else a ``TiledEmbedding``. Intensities are mapped once for the whole image."""
        steps = self.iter_embedding(image, image_format, contrast_limits)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def set_image(self, image: np.ndarray, image_format: str = "RGB", contrast_limits=None) -> None:
        """Compute and keep the embedding(s) of ``image``; one that fits a tile is also prepared
        for the decoder, as ``SamPredictor.set_image`` does (a tile is prepared by the inner
        predictor's own rule once decoded: its second call, or a first one of several prompts)."""
        self.set_image_embedding(self.compute_embedding(image, image_format, contrast_limits))
        if not self.is_tiled:
            self.predictor.prepare()

    def prepare_embedding(self, emb: ImageEmbedding | TiledEmbedding) -> ImageEmbedding | TiledEmbedding:
        """An image that fits one tile: ``SamPredictor.prepare_embedding`` (the decoder's per-image
        work kept with the embedding). A tiled one is returned as it is: its tiles are prepared by
        the inner predictor's rule once decoded (a preparation per tile would hold ~24 MB each)."""
        return emb if isinstance(emb, TiledEmbedding) else self.predictor.prepare_embedding(emb)

    def set_image_embedding(self, emb: ImageEmbedding | TiledEmbedding) -> None:
        """Use a previously computed embedding (plain or tiled)."""
        if isinstance(emb, TiledEmbedding):
            self._embedding, self._current = emb.to(self.device), None
        else:
            self.predictor.set_image_embedding(emb)
            self._embedding, self._current = self.predictor.embedding, -1

    def reset_image(self) -> None:
        """Forget the current image."""
        self.predictor.reset_image()
        self._embedding, self._current = None, None

    @property
    def embedding(self) -> ImageEmbedding | TiledEmbedding | None:
        return self._embedding

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def is_tiled(self) -> bool:
        """Whether the current image is decoded in tiles."""
        return isinstance(self._embedding, TiledEmbedding)

    @property
    def original_size(self) -> tuple[int, int] | None:
        return None if self._embedding is None else self._embedding.original_size

    @property
    def low_res_size(self) -> tuple[int, int]:
        """(rows, cols) of the low-res logits / ``mask_input`` of the current image."""
        if not self.is_tiled:
            return self.mask_input_size
        return grid_shape(self._embedding, self.cell)

    def _use(self, k: int) -> None:
        """Point the inner predictor at tile ``k`` (-1: the overview)."""
        if k != self._current:
            emb = self._embedding
            self.predictor.set_image_embedding(emb.overview if k < 0 else emb.tiles[k])
            self._current = k

    # ------------------------------------------------------------------ prediction
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """Masks for one object; arguments and results as ``SamPredictor.predict``, except that on a
        tiled image ``mask_input`` and the low-res logits are (1 | C, *low_res_size)."""
        if not self.is_tiled:  # the inner predictor holds the plain embedding (or raises: no image)
            return self.predictor.predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits)
        if point_coords is not None and point_labels is not None:
            point_coords, point_labels = np.asarray(point_coords)[None], np.asarray(point_labels)[None]
        if box is not None:
            box = np.asarray(box).reshape(1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input)[None]
        masks, scores, low = self.predict_batch(point_coords, point_labels, box, mask_input,
                                                multimask_output, return_logits)
        return masks[0], scores[0], low[0]

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output: bool = False, return_logits: bool = False, progress: Progress = None,
                      cancel: Cancel = None, chunk_size: int | None = None):
        """Masks for B objects; as ``SamPredictor.predict_batch``, each object decoded in its own tile,
        ``chunk_size`` objects of one tile per decoder call, ``progress(done, total)`` in objects after
        each, ``cancel`` (raises ``Cancelled``) between them; ``TooMuchWorkError`` before any work when
        the outputs would exceed ``chunks.MAX_BATCH_OUTPUT_BYTES`` (use :meth:`iter_predict_batch`).

        Returns masks (B, C, H, W), scores (B, C), low-res logits (B, C, *low_res_size); numpy.
        """
        if not self.is_tiled:
            return self.predictor.predict_batch(point_coords, point_labels, boxes, mask_input, multimask_output,
                                                return_logits, progress, cancel, chunk_size)
        prompts, tiles = self._batch(point_coords, point_labels, boxes, mask_input)
        n, k = len(tiles), 3 if multimask_output else 1
        check_output_size(n, k, self._embedding.original_size, self.low_res_size, return_logits)
        out = self._outputs(n, k, return_logits)
        size = self._chunk_size(chunk_size, k, return_logits)
        groups = [np.flatnonzero(tiles == t) for t in np.unique(tiles)]  # tile by tile: fewest switches and calls
        batches = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
        for _ in self._chunks(batches, prompts, tiles, multimask_output, return_logits, progress, cancel, out):
            pass
        return out

    def iter_predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                           multimask_output: bool = False, return_logits: bool = False, progress: Progress = None,
                           cancel: Cancel = None, chunk_size: int | None = None):
        """:meth:`predict_batch` as a generator of ``(start, masks, scores, low_res)`` for objects
        ``start:start + len(masks)``, in order: memory bounded by one chunk (``chunks.fit_chunk``)."""
        if not self.is_tiled:
            return self.predictor.iter_predict_batch(point_coords, point_labels, boxes, mask_input,
                                                     multimask_output, return_logits, progress, cancel, chunk_size)
        prompts, tiles = self._batch(point_coords, point_labels, boxes, mask_input)  # checked now, not lazily
        n, size = len(tiles), self._chunk_size(chunk_size, 3 if multimask_output else 1, return_logits)
        batches = [np.arange(i, min(n, i + size)) for i in range(0, n, size)]
        chunks = self._chunks(batches, prompts, tiles, multimask_output, return_logits, progress, cancel)
        return ((int(idx[0]), *arrays) for idx, arrays in chunks)

    def _batch(self, point_coords, point_labels, boxes, mask_input):
        """Checked prompts (coords (B, N, 2), labels, boxes (B, 4), mask_input (B, 1, *grid)) and each
        object's tile (-1: the overview)."""
        if (point_coords is None) != (point_labels is None):
            raise SamUserError("point_coords and point_labels must be given together")
        coords = None if point_coords is None else as_numbers(point_coords, "point_coords", "(x, y) pixels")
        labels = None if point_labels is None else np.asarray(point_labels)
        boxes = None if boxes is None else as_numbers(boxes, "boxes", "(x0, y0, x1, y1) pixels")
        if coords is not None and (coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]):
            raise SamUserError(f"point_coords must have shape (B, N, 2) (x, y) and point_labels (B, N), got "
                               f"{coords.shape} and {labels.shape}")
        if boxes is not None and (boxes.ndim != 2 or boxes.shape[1] != 4):
            raise SamUserError(f"boxes must have shape (B, 4) (x0, y0, x1, y1), got {boxes.shape}")
        n = next((len(a) for a in (coords, boxes, mask_input) if a is not None), 0)
        if any(a is not None and len(a) != n for a in (coords, boxes, mask_input)):
            raise SamUserError("point_coords, boxes and mask_input must have the same batch size B")
        grid = self.low_res_size
        if mask_input is not None:
            mask_input = as_numbers(mask_input, "mask_input", "low-res logits").astype(np.float32)
            if mask_input.shape != (n, 1, *grid):
                raise SamUserError(f"mask_input must have shape ({n}, 1, {grid[0]}, {grid[1]}) on this tiled "
                                   f"image (low-res logits of a previous prediction), got {mask_input.shape}")
            check_finite(mask_input, "mask_input", "low-res logits of a previous prediction")
        if coords is not None:  # every object checked before the first chunk is decoded
            check_finite(coords, "point_coords", "(x, y) pixels")
            labels = check_labels(labels, batch=True)
        if boxes is not None:
            check_boxes(boxes, "boxes")
        warn_outside(coords, labels, boxes, self._embedding.original_size, stacklevel=4)
        tiles = np.array([self._choose(coords, labels, boxes, i) for i in range(n)], dtype=int)
        return (coords, labels, boxes, mask_input), tiles

    def _outputs(self, n: int, k: int, return_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (n, k, H, W) (False, or ``OUTSIDE_LOGIT`` logits), scores (n, k), low-res (n, k, *grid)."""
        h, w = self._embedding.original_size
        masks = np.full((n, k, h, w), OUTSIDE_LOGIT, np.float32) if return_logits else np.zeros((n, k, h, w), bool)
        return masks, np.zeros((n, k), np.float32), np.full((n, k, *self.low_res_size), OUTSIDE_LOGIT, np.float32)

    def _chunk_size(self, chunk_size: int | None, k: int, return_logits: bool) -> int:
        """Objects per chunk: ``chunk_size`` (default 32), fewer when their whole-image outputs would
        exceed ``chunks.CHUNK_BYTES`` (``chunks.fit_chunk``)."""
        per_mask = math.prod(self._embedding.original_size) * (4 if return_logits else 1)
        return fit_chunk(chunk_size, k * (per_mask + 4 * math.prod(self.low_res_size)))

    def _chunks(self, batches, prompts, tiles, multimask_output, return_logits, progress, cancel, out=None):
        """Decodes the objects of each of ``batches`` (index arrays; one decoder call per tile in each)
        and yields ``(indices, arrays)``: with ``out`` (``_outputs`` of all objects) written there at
        ``indices`` (``arrays`` None), else the chunk's own (masks, scores, low)."""
        coords, labels, boxes, mask_input = prompts
        emb, n, k = self._embedding, len(tiles), 3 if multimask_output else 1
        grid = (emb, self.cell, self.img_size, self.mask_input_size)
        done = 0
        for idx in batches:
            check_cancel(cancel)
            (masks, scores, low), rows = (out, idx) if out is not None else (
                self._outputs(len(idx), k, return_logits), np.arange(len(idx)))
            for t in np.unique(tiles[idx]):
                at = np.flatnonzero(tiles[idx] == t)
                sel, dst = idx[at], rows[at]
                r, c = (0, 0) if t < 0 else emb.origins[t]
                ci = None if coords is None else coords[sel] - [c, r]
                bi = None if boxes is None else boxes[sel] - [c, r, c, r]
                mi = None if mask_input is None else np.stack([grid_to_tile(m, t, *grid) for m in mask_input[sel]])
                self._use(t)
                with warnings.catch_warnings():  # prompts outside the image: said once, by _batch
                    warnings.simplefilter("ignore", SamInputWarning)
                    m, sc, lo = self.predictor.predict_batch(ci, None if labels is None else labels[sel], bi, mi,
                                                             multimask_output, return_logits, chunk_size=len(sel))
                th, tw = m.shape[-2:]
                masks[dst, :, r : r + th, c : c + tw] = m
                scores[dst] = sc
                low[dst] = np.stack([tile_to_grid(x, t, *grid) for x in lo])
            done += len(idx)
            yield idx, None if out is not None else (masks, scores, low)
            if progress is not None:
                progress(done, n)

    def _choose(self, coords, labels, boxes, i: int) -> int:
        """The tile that holds object ``i``'s prompts farthest from its inner edges; -1: the overview."""
        xy = []
        if coords is not None:
            keep = labels[i] >= 0 if labels is not None else slice(None)
            xy.append(coords[i][keep])
        if boxes is not None:
            xy.append(boxes[i].reshape(2, 2))
        pts = np.concatenate(xy) if xy else np.zeros((0, 2))
        if not len(pts):
            return -1
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        need = self.overlap // 8 if boxes is not None else self.overlap // 2
        emb, (h, w) = self._embedding, self._embedding.original_size
        best, best_margin = -1, -math.inf
        for k, ((r, c), t) in enumerate(zip(emb.origins, emb.tiles, strict=True)):
            th, tw = t.original_size
            if x0 < c or y0 < r or x1 > c + tw - 1 or y1 > r + th - 1:
                continue
            margin = min(x0 - c if c > 0 else math.inf, c + tw - 1 - x1 if c + tw < w else math.inf,
                         y0 - r if r > 0 else math.inf, r + th - 1 - y1 if r + th < h else math.inf)
            if margin > best_margin:
                best, best_margin = k, margin
        return best if best_margin >= need else -1
