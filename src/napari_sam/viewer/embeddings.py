"""Slices and embeddings of ``SegmentAnything``: slice index on screen, per-slice LRU cache, encode jobs.

The cache key is (image layer, slice index, contrast limits used, composite channel axis, model version),
so changing any of them re-encodes. ``encode_job`` captures the settings on the GUI thread and returns a
callable that only reads the needed slice (``np.asarray(layer.data[index])``) and encodes it, safe to run in
a worker thread; it also makes the mask decoder's per-image preparation there
(``SamPredictor.prepare_embedding``), which the cache keeps for its most recent entries only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from napari_sam.engine.images import to_sam_image
from napari_sam.errors import SamUserError
from napari_sam.viewer.slicing import EmbeddingCache, current_index, slice_image


class EmbeddingsMixin:
    """Needs ``viewer``, ``image_layer``, ``predictor``, ``channel_axis``, ``cache``, ``_model_version``,
    ``_tiled``, ``_predictor_key``, ``request_embedding`` and ``events.embedding``."""

    viewer: Any
    image_layer: Image | None
    predictor: Any
    channel_axis: int | None
    cache: EmbeddingCache
    _model_version: int
    _tiled: bool
    _predictor_key: Any
    request_embedding: Any
    events: Any

    # ------------------------------------------------------------------ slices and embeddings
    def current_index(self) -> tuple[int, ...]:
        """Leading-axis index (image data coordinates) of the slice on screen; () for 2D images."""
        return current_index(self.viewer, self._require_image())

    def _require_image(self) -> Image:
        if self.image_layer is None:
            raise SamUserError("choose an image layer first")
        return self.image_layer

    def _require_model(self) -> Any:
        if self.predictor is None:
            raise SamUserError("no SAM model is loaded: choose a model or load a checkpoint file")
        return self.predictor

    def _image_settings(self) -> tuple[tuple[float, float] | None, int | None]:
        img = self._require_image()
        limits = None if np.dtype(img.dtype) == np.uint8 else tuple(float(v) for v in img.contrast_limits)
        return limits, (None if img.rgb else self.channel_axis)

    def _key(self, index: tuple[int, ...]) -> tuple:
        limits, chan = self._image_settings()
        if chan is not None:
            index = tuple(0 if i == chan else v for i, v in enumerate(index))
        return (id(self.image_layer), index, limits, chan, self._embedding_tag())

    def _embedding_tag(self) -> tuple[int, bool]:
        """What an embedding was made with: (model version, tiled)."""
        return (self._model_version, self._tiled)

    def encode_job(self, index: tuple[int, ...] | None = None) -> tuple[tuple, Any]:
        """(cache key, job) where ``job()`` reads the slice and returns its ``ImageEmbedding``.

        Settings are captured now, on the calling (GUI) thread; ``job`` may run in a worker thread.
        With tiles (``tiled``), ``job.steps`` is the number of encoder runs the slice takes and
        ``job.iterate()`` a generator that yields ``(done, total)`` after each and returns the
        embedding (for a progress bar); otherwise ``job.steps`` is 1.
        """
        predictor, img = self._require_model(), self._require_image()
        index = self.current_index() if index is None else tuple(index)
        limits, chan = self._image_settings()
        key = self._key(index)

        def read() -> np.ndarray:
            arr, rgb = slice_image(img, index, chan)
            return to_sam_image(arr, contrast_limits=limits, rgb=rgb)

        def job() -> Any:
            emb = predictor.compute_embedding(read())
            # the decoder's per-image work too, while off the event loop: the slice's first click
            # is then decoded on the prepared image, as its later ones are
            return predictor.prepare_embedding(emb) if hasattr(predictor, "prepare_embedding") else emb

        job.steps = 1
        if hasattr(predictor, "iter_embedding"):  # tiles: one encoder run per tile and the overview
            job.steps = predictor.encodings(img.data.shape[len(index) : len(index) + 2])  # (H, W) of a slice

            def iterate() -> Any:
                return (yield from predictor.iter_embedding(read()))

            job.iterate = iterate
        return key, job

    def has_embedding(self, index: tuple[int, ...] | None = None) -> bool:
        """Whether the embedding of the slice (default: on screen) is cached."""
        index = self.current_index() if index is None else tuple(index)
        return self._key(index) in self.cache

    def store_embedding(self, key: tuple, embedding: Any) -> None:
        """Cache an embedding computed by :meth:`encode_job` (ignored if the model or tiling changed since)."""
        if key[-1] == self._embedding_tag():
            self.cache.put(key, embedding)
            self.events.embedding(value=key)

    def embedding(self, index: tuple[int, ...] | None = None) -> Any:
        """The ``ImageEmbedding`` of a slice (default: on screen), computed synchronously if needed."""
        key, job = self.encode_job(index)
        emb = self.cache.get(key)
        if emb is None:
            emb = self.stored_embedding(key[1])
            emb = job() if emb is None else emb
            self.store_embedding(key, emb)
        return emb

    def stored_embedding(self, index: tuple[int, ...]) -> Any | None:
        """An embedding already held elsewhere (a stack store, see ``VolumeMixin``); None here."""
        return None

    def _use_embedding(self, index: tuple[int, ...], sync: bool) -> bool:
        """Point the predictor at the slice's embedding; False (request sent) if not ready."""
        key = self._key(index)
        emb = self.cache.get(key)
        if emb is None:
            if not sync and self.request_embedding is not None:
                self.request_embedding(index)
                return False
            emb = self.embedding(index)
        if self._predictor_key != key:
            self.predictor.set_image_embedding(emb)
            self._predictor_key = key
        return True

