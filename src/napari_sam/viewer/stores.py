"""Embeddings of whole stacks for ``SegmentAnything``: one ``EmbeddingStore`` per stack, the last few kept.

A store is keyed by (image layer, outer index, contrast limits, composite channel axis, model
version) and encodes with the background predictor (``ModelSlot.background_predictor``), so it can
fill in a worker thread. Propagation and precompute fill it; the interactive slice embeddings reuse
what it holds (:meth:`StackStores.stored_embedding`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from napari_sam.errors import SamUserError
from napari_sam.viewer.image_source import ImageSource
from napari_sam.viewer.model_slot import ModelSlot
from napari_sam.viewer.stack import Stack, StackSlices
from napari_sam.volume.store import DEFAULT_BUDGET, EmbeddingStore

MAX_STORES = 2  # stacks (image layer x outer index x settings) whose embeddings are kept


class StackStores:
    """The ``EmbeddingStore`` of each recently used stack of the image in ``images``.

    ``budget`` (bytes of float16 embeddings per stack, LRU) and ``cache_dir`` (optional zarr disk
    cache) apply to stores created afterwards.
    """

    def __init__(self, images: ImageSource, models: ModelSlot) -> None:
        self.images = images
        self.models = models
        self.budget = DEFAULT_BUDGET
        self.cache_dir: str | None = None
        self._stores: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, st: Stack) -> tuple:
        limits, chan = self.images.settings()
        outer = tuple(0 if i == chan else v for i, v in enumerate(st.outer))
        return (id(self.images.layer), outer, limits, chan, self.models.version)

    def store(self, index: tuple[int, ...] | None = None) -> Any:
        """The ``EmbeddingStore`` of the stack holding slice ``index`` (default: on screen), created on
        first use; the last ``MAX_STORES`` are kept."""
        st = self.images.stack(index)
        key = self._key(st)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                limits, chan = self.images.settings()
                vol = StackSlices(self.images.require(), st, limits, chan)
                store = EmbeddingStore(
                    self.models.background_predictor(), vol, axis=0, budget_bytes=self.budget,
                    cache_dir=self.cache_dir, rgb=True,
                )
                self._stores[key] = store
                while len(self._stores) > MAX_STORES:
                    self._stores.popitem(last=False)
            self._stores.move_to_end(key)
        return store

    def stored_embedding(self, index: tuple[int, ...]) -> Any | None:
        """The slice's embedding if a store already holds it (memory or disk), else None (always None
        for a slice that tiles cut up: the stores hold whole-slice embeddings)."""
        if not self._stores or not index:
            return None
        try:
            st = self.images.stack(index)
        except SamUserError:
            return None
        if self.models.tiled and self.models.predictor.encodings(st.hw) > 1:
            return None
        store = self._stores.get(self._key(st))
        if store is None or not store.is_cached(st.z):
            return None
        return store.get(st.z)

    def clear(self) -> None:
        """Forget every store (the disk cache, if any, stays)."""
        with self._lock:
            self._stores.clear()

    def forget_layer(self, layer: Any) -> None:
        """Forget the stores of an image layer removed from the viewer."""
        with self._lock:
            for key in [k for k, s in self._stores.items() if s.volume.image is layer]:
                del self._stores[key]

    def __len__(self) -> int:
        return len(self._stores)
