"""Slice embeddings of ``SegmentAnything``: the per-slice LRU cache and the encode jobs.

The cache key is (image layer, slice index, contrast limits used, composite channel axis, (model
version, tiled)), so changing any of them re-encodes. ``encode_job`` captures the settings on the GUI
thread and returns a callable that only reads the needed slice (``np.asarray(layer.data[index])``)
and encodes it, safe to run in a worker thread; it also makes the mask decoder's per-image
preparation there (``SamPredictor.prepare_embedding``), which the cache keeps for its most recent
entries only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from napari_sam.engine.images import to_sam_image
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.slicing import EmbeddingCache, slice_image, spatial_shape
from napari_sam.viewer.stores import StackStores


class SliceEmbeddings:
    """Embeddings of the slices of ``images`` made by ``models``' interactive predictor.

    Args:
        stores: stack stores whose embeddings are reused instead of encoding again (or None).
        cache_size: slices kept (LRU).
        on_stored: called with the cache key of each embedding stored.
        report: ``report(what)``, a context giving a ``progress(done, total)`` (or None) for a slice
            encoded here in several runs (tiles; the façade's ``console_progress``); None: no reports.

    ``request``: None -> :meth:`use` computes a missing embedding synchronously; the dock widget sets
    a background runner (``request(index)``) and the preview waits for it.
    """

    def __init__(
        self, images: ImageSource, models: ModelSlot, stores: StackStores | None = None,
        cache_size: int = 8, on_stored: Callable[[tuple], Any] | None = None,
        report: Callable[[str], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.images = images
        self.models = models
        self.stores = stores
        self.cache = EmbeddingCache(cache_size)
        self.on_stored = on_stored
        self.report = report
        self.request: Callable[[tuple[int, ...]], Any] | None = None
        self._predictor_key: Any = None  # the key of the embedding the predictor holds

    def key(self, index: tuple[int, ...]) -> tuple:
        """The cache key of slice ``index`` with the current image settings and model."""
        limits, chan = self.images.settings()
        if chan is not None:
            index = tuple(0 if i == chan else v for i, v in enumerate(index))
        return (id(self.images.layer), tuple(index), limits, chan, self.models.tag)

    def encode_job(self, index: tuple[int, ...] | None = None) -> tuple[tuple, Any]:
        """(cache key, job) where ``job()`` reads the slice and returns its ``ImageEmbedding``.

        Settings are captured now, on the calling (GUI) thread; ``job`` may run in a worker thread.
        With tiles, ``job.steps`` is the number of encoder runs the slice takes and ``job.iterate()``
        a generator that yields ``(done, total)`` after each and returns the embedding (for a
        progress bar); otherwise ``job.steps`` is 1.
        """
        predictor, img = self.models.require(), self.images.require()
        index = self.images.index_or_current(index)
        limits, chan = self.images.settings()
        key = self.key(index)

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
            job.steps = predictor.encodings(spatial_shape(img)[len(index) : len(index) + 2])  # (H, W) of a slice

            def iterate() -> Any:
                return (yield from predictor.iter_embedding(read()))

            job.iterate = iterate
        return key, job

    def has(self, index: tuple[int, ...] | None = None) -> bool:
        """Whether the embedding of the slice (default: on screen) is cached."""
        return self.key(self.images.index_or_current(index)) in self.cache

    def store(self, key: tuple, embedding: Any) -> None:
        """Cache an embedding computed by :meth:`encode_job` (ignored if the model or tiling changed since)."""
        if key[-1] == self.models.tag:
            self.cache.put(key, embedding)
            if self.on_stored is not None:
                self.on_stored(key)

    def stored(self, index: tuple[int, ...]) -> Any | None:
        """The slice's embedding if a stack store already holds it, else None."""
        return None if self.stores is None else self.stores.stored_embedding(index)

    def get(self, index: tuple[int, ...] | None = None) -> Any:
        """The ``ImageEmbedding`` of a slice (default: on screen), computed synchronously if needed."""
        key, job = self.encode_job(index)
        emb = self.cache.get(key)
        if emb is None:
            emb = self.stored(key[1])
            emb = self._encode(job) if emb is None else emb
            self.store(key, emb)
        return emb

    def _encode(self, job: Any) -> Any:
        """``job()``; a slice of several encoder runs (tiles) reports them through :attr:`report`."""
        if self.report is None or job.steps <= 1:
            return job()
        with self.report(f"{job.steps} tile encodings") as progress:
            if progress is None:
                return job()
            steps = job.iterate()
            while True:
                try:
                    progress(*next(steps))
                except StopIteration as end:
                    return end.value  # a TiledEmbedding: its tiles are prepared when decoded

    def use(self, index: tuple[int, ...], sync: bool) -> bool:
        """Point the interactive predictor at the slice's embedding; False (request sent) if not ready."""
        key = self.key(index)
        emb = self.cache.get(key)
        if emb is None:
            if not sync and self.request is not None:
                self.request(index)
                return False
            emb = self.get(index)
        if self._predictor_key != key:
            self.models.require().set_image_embedding(emb)
            self._predictor_key = key
        return True

    def clear(self) -> None:
        """Forget every cached embedding (the model, the tiling or the predictor changed)."""
        self.cache.clear()
        self._predictor_key = None
