"""Per-slice image embeddings of a stack or time series, in memory (LRU, float16) and on disk (zarr).

``EmbeddingStore(predictor, volume, axis=0)`` hands out :class:`~napari_sam.engine.predictor.ImageEmbedding`
for slice ``i`` of a 3D volume (n, H, W) or an RGB one (n, H, W, 3|4), slicing along ``axis``.
For (T, Z, Y, X) data pass ``data[t]`` (the store is per time point). Slices are encoded on demand
(:meth:`get`), around a position (:meth:`prefetch`, from a background thread) or all ahead
(:meth:`precompute`). Embeddings are kept as float16 on the CPU (2 MiB per slice for SAM's
256x64x64) under ``budget_bytes``; the least recently used are dropped first (the most recent one
is always kept). All public methods are thread-safe; encoder calls are serialised.

Disk cache (``cache_dir``): ``<cache_dir>/<key>.zarr`` (layout in ``napari_sam.volume.zarr_cache``), one
chunk per slice, each marked done (with the digest of the slice's bytes) only after its features
are written. The key hashes (blake2b):
- the data: shape, dtype, axis and, with ``hash_mode='full'`` (default for numpy arrays), every
  byte of the volume (~0.1 s per 100 MB); with ``'lazy'`` (default for dask/zarr arrays, which may
  not fit in memory) only the first, middle and last slice, and then every slice read back from disk
  is checked against its own digest before use (a changed slice is recomputed);
- the model: ``arch``, ``img_size``, pixel mean/std, and a fingerprint of the state dict (names,
  shapes, dtypes and up to 4096 evenly spaced values of every tensor);
- the preprocessing: contrast limits, rgb, the store format version.
A store whose attributes do not match the key, whose arrays have another shape, or that cannot be
read is deleted and rebuilt; an unreadable or unfinished slice is recomputed. Different data never
shares a folder.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from napari_sam.engine.embedding import ImageEmbedding, unpack
from napari_sam.engine.images import PERCENTILES, to_sam_image
from napari_sam.engine.progress import AUTO, Cancel, Progress, is_cancelled, resolve_progress
from napari_sam.errors import SamUserError
from napari_sam.volume.zarr_cache import (
    STORE_FORMAT,
    STORE_VERSION,
    ZarrSliceCache,
    ident_key,
    model_fingerprint,
    slice_digest,
)

__all__ = ["EmbeddingStore", "model_fingerprint", "slice_digest", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 1 << 30  # 1 GiB: 512 SAM slices in float16

class EmbeddingStore:
    """Embeddings of every slice of ``volume`` along ``axis`` for ``predictor``.

    Args:
        predictor: a ``napari_sam.engine.predictor.SamPredictor`` (its model and device are used).
        volume: (n, H, W) or (n, H, W, 3|4) array-like (numpy, dask, zarr), ``n`` along ``axis``.
        axis: the slice axis (z or t); the others are (row, col[, channel]).
        budget_bytes: memory for float16 embeddings (LRU); at least one slice is always kept.
        cache_dir: folder for the zarr disk cache, or None (memory only).
        contrast_limits: (low, high) for non-uint8 data; None: the (0.1, 99.9) percentiles of up to
            16 evenly spaced slices, the same for every slice (per-slice limits would make
            neighbouring slices look different to the encoder).
        rgb: whether the last axis is colour; None infers it (4D with 3 or 4 channels last).
        hash_mode: ``'full'``, ``'lazy'`` or ``'auto'`` (full for numpy arrays); see the module doc.
        zoom: how slices smaller than the model's input are embedded: ``"predictor"`` (its ``zoom``,
            by default the model's), None (enlarged to fill the input) or a scale (1: the slice's own
            pixel scale, zero-padded); see ``SamPredictor.zoom`` and docs/volume.md, "Scale".
    """

    def __init__(
        self,
        predictor,
        volume,
        axis: int = 0,
        budget_bytes: int = DEFAULT_BUDGET,
        cache_dir: str | Path | None = None,
        contrast_limits: tuple[float, float] | None = None,
        rgb: bool | None = None,
        hash_mode: str = "auto",
        zoom: float | None | str = "predictor",
    ) -> None:
        shape = tuple(int(s) for s in volume.shape)
        self.rgb = bool(len(shape) == 4 and shape[-1] in (3, 4)) if rgb is None else bool(rgb)
        if len(shape) != 3 + self.rgb:
            raise ValueError(
                f"expected a (n, H, W) or (n, H, W, 3|4) volume, got shape {shape}; "
                "for (T, Z, Y, X) data pass data[t]"
            )
        try:
            ok = not isinstance(axis, bool) and int(axis) == axis and -len(shape) <= axis < len(shape)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SamUserError(
                f"axis {axis!r} is out of range for a volume of shape {shape} ({len(shape)} axes): the slice "
                f"axis must be one of 0..{2} (or -{len(shape)}..-{len(shape) - 2 if self.rgb else 1})"
            )
        self.axis = int(axis) % len(shape)
        if self.rgb and self.axis == len(shape) - 1:
            raise ValueError("the slice axis cannot be the colour axis")
        self.predictor, self.volume = predictor, volume
        self.n = shape[self.axis]
        self.slice_shape = shape[: self.axis] + shape[self.axis + 1 :]
        self.budget_bytes = int(budget_bytes)
        dtype = np.dtype(volume.dtype)
        if contrast_limits is None and dtype not in (np.uint8, np.bool_):
            picks = np.unique(np.linspace(0, self.n - 1, min(self.n, 16)).round().astype(int))
            sample = np.concatenate([self.slice(int(i)).reshape(-1) for i in picks]).astype(np.float64)
            sample = sample[np.isfinite(sample)]
            contrast_limits = (
                tuple(float(v) for v in np.percentile(sample, PERCENTILES)) if sample.size else None
            )
        self.contrast_limits = None if contrast_limits is None else tuple(float(v) for v in contrast_limits)
        if hash_mode == "auto":
            hash_mode = "full" if isinstance(volume, np.ndarray) else "lazy"
        if hash_mode not in ("full", "lazy"):
            raise ValueError(f"hash_mode must be 'auto', 'full' or 'lazy', not {hash_mode!r}")
        self.hash_mode = hash_mode
        self._zoom_arg = {} if zoom == "predictor" else {"zoom": None if zoom is None else float(zoom)}
        self.zoom = self._zoom_arg.get("zoom", getattr(predictor, "zoom", None))
        model = predictor.model
        ident = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "data": {
                "shape": shape,
                "dtype": dtype.str,
                "axis": self.axis,
                "mode": hash_mode,
                "digest": self._data_digest(),
            },
            "model": {
                "arch": getattr(model, "arch", type(model).__name__),
                "fingerprint": model_fingerprint(model),
            },
            "preprocess": {
                "img_size": int(predictor.img_size),
                "contrast_limits": self.contrast_limits,
                "rgb": self.rgb,
                "zoom": self.zoom,
            },
        }
        self.key = ident_key(ident)
        self._ident = ident
        self._mem: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._inflight: dict[int, threading.Event] = {}
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()
        self._gen = 0
        self._sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # original_size, input_size
        #: slices encoded together by :meth:`precompute` (a GPU's throughput comes with batches)
        self.batch_size = 8 if torch.device(predictor.device).type == "cuda" else 1
        self.stats = {"computed": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt": 0}
        c = int(model.prompt_encoder.embed_dim) if hasattr(model, "prompt_encoder") else 256
        # (fp16; SAM 2's high-resolution maps as 16 and 4 times their channels on the same grid)
        self._high_res = list(getattr(model, "high_res_channels", ()))
        c += sum(ch * 4 ** (len(self._high_res) - i) for i, ch in enumerate(self._high_res))
        self.slice_nbytes = 2 * c * int(np.prod(predictor.embedding_size))
        self.path = None if cache_dir is None else Path(cache_dir) / f"{self.key}.zarr"
        self._disk: ZarrSliceCache | None = None
        if self.path is not None:
            self._disk = ZarrSliceCache(self.path, self.key, self.n, ident)
            self.stats["rebuilt"] = int(self._disk.rebuilt)
            self._sizes = self._disk.sizes

    # ------------------------------------------------------------------ data
    def __len__(self) -> int:
        return self.n

    def slice(self, index: int) -> np.ndarray:
        """Slice ``index`` of the volume as a numpy array, (H, W) or (H, W, 3|4)."""
        idx = (slice(None),) * self.axis + (int(index),)
        return np.asarray(self.volume[idx])

    def _data_digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        picks = range(self.n) if self.hash_mode == "full" else sorted({0, self.n // 2, self.n - 1})
        for i in picks:
            h.update(slice_digest(self.slice(i)).to_bytes(8, "little"))
        return h.hexdigest()

    def _check(self, index: int) -> int:
        i = int(index)
        if not -self.n <= i < self.n:
            raise IndexError(f"slice {index} is out of range for {self.n} slices along axis {self.axis}")
        return i % self.n

    # ------------------------------------------------------------------ disk
    def _read_disk(self, i: int) -> torch.Tensor | None:
        if self._disk is None or not self._disk.done[i]:
            return None
        if self.hash_mode == "lazy" and int(self._disk.done[i]) != slice_digest(self.slice(i)):
            return None
        feats = self._disk.read(i)
        if feats is not None:
            self.stats["disk_hits"] += 1
        return feats

    def disk_nbytes(self) -> int:
        """Bytes used by the disk cache (0 without one)."""
        return 0 if self._disk is None else self._disk.nbytes()

    # ------------------------------------------------------------------ memory / compute
    def _encode(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """float16 features on the host and the data digest of each slice of ``indices``, the
        encoder run on them as one batch (``SamPredictor.encode_batch``)."""
        images = [self.slice(i) for i in indices]
        rgb_images = [to_sam_image(img, contrast_limits=self.contrast_limits, rgb=self.rgb) for img in images]
        with self._encode_lock:
            embs = self.predictor.encode_batch(rgb_images, batch_size=len(rgb_images), **self._zoom_arg)
            self._sizes = (tuple(embs[0].original_size), tuple(embs[0].input_size))
            self.stats["computed"] += len(embs)
        return [
            (emb.packed().detach().to("cpu", torch.float16).contiguous(), slice_digest(img))
            for emb, img in zip(embs, images, strict=True)
        ]

    def _put(self, i: int, feats: torch.Tensor) -> None:
        self._mem[i] = feats
        self._mem.move_to_end(i)
        self.slice_nbytes = feats.element_size() * feats.numel()
        while len(self._mem) > 1 and self.nbytes > self.budget_bytes:
            self._mem.popitem(last=False)

    def _fetch(self, i: int) -> torch.Tensor:
        """float16 (1, C, h, w) features of slice i: memory, then disk, then the encoder."""
        while True:
            with self._lock:
                if i in self._mem:
                    self._mem.move_to_end(i)
                    self.stats["memory_hits"] += 1
                    return self._mem[i]
                ev = self._inflight.get(i)
            if ev is not None:
                ev.wait()  # another thread is computing this slice; then look again
                continue
            made = self._make_ready([i])
            if i in made:
                return made[i]

    def _make_ready(self, indices: list[int]) -> dict[int, torch.Tensor]:
        """Put the slices of ``indices`` in memory: from the disk cache, or encoded together in one
        batch; returns the features of those it made. Slices already in memory or being made by
        another thread are left alone."""
        with self._lock:
            owned = [i for i in indices if i not in self._mem and i not in self._inflight]
            for i in owned:
                self._inflight[i] = threading.Event()
        made: dict[int, torch.Tensor] = {}
        try:
            todo = []
            for i in owned:
                feats = self._read_disk(i)
                if feats is None:
                    todo.append(i)
                    continue
                made[i] = feats
                with self._lock:
                    self._put(i, feats)
            if todo:
                for i, (feats, digest) in zip(todo, self._encode(todo), strict=True):
                    if self._disk is not None:
                        self._disk.write(i, feats, digest, self._sizes)
                    made[i] = feats
                    with self._lock:
                        self._put(i, feats)
            return made
        finally:
            with self._lock:
                for i in owned:
                    self._inflight.pop(i).set()

    @property
    def nbytes(self) -> int:
        """Bytes of embeddings held in memory now."""
        return sum(f.element_size() * f.numel() for f in self._mem.values())

    @property
    def capacity(self) -> int:
        """How many slices fit in the memory budget (at least 1)."""
        return max(1, self.budget_bytes // max(1, self.slice_nbytes))

    def is_cached(self, index: int) -> bool:
        """Whether slice ``index`` is in memory or complete on disk (no encoder call needed)."""
        i = self._check(index)
        return i in self._mem or (self._disk is not None and bool(self._disk.done[i]))

    def get(self, index: int) -> ImageEmbedding:
        """The embedding of slice ``index`` (features float32 on the predictor's device)."""
        feats = self._fetch(self._check(index))
        original_size, input_size = self._sizes
        # SAM 2's high-resolution maps travel folded into channels (ImageEmbedding.packed)
        parts = unpack(feats.to(self.predictor.device, torch.float32), self._high_res)
        return ImageEmbedding(original_size=original_size, input_size=input_size, **parts)

    def prefetch(self, index: int, radius: int = 2, cancel: Cancel = None) -> int:
        """Make slice ``index`` and then its neighbours (index+1, index-1, ... up to ``radius``) ready.

        Meant for a background thread; a newer ``prefetch`` call stops an older one. Without a disk
        cache no more slices than fit in the budget are prefetched. Returns the slices made ready.
        """
        i = self._check(index)
        with self._lock:
            self._gen += 1
            gen = self._gen
        order = [i] + [j for d in range(1, radius + 1) for j in (i + d, i - d) if 0 <= j < self.n]
        if self._disk is None:
            order = order[: self.capacity]
        done = 0
        for j in order:
            if gen != self._gen or is_cancelled(cancel):
                break
            self._fetch(j)
            done += 1
        return done

    def precompute(self, progress: Progress | str = AUTO, cancel: Cancel = None) -> int:
        """Encode every slice not cached yet (stored on disk when there is a cache); returns how many.

        Without a disk cache only the last ``capacity`` slices stay in memory (a warning says so).
        Slices are encoded ``batch_size`` at a time (8 on a GPU, one on a CPU: the encoder's
        throughput on a GPU comes with batches). ``progress(done, n)`` is called after each batch
        (default ``"auto"``: a terminal bar when standard error is a terminal); ``cancel`` stops between batches.
        """
        progress = resolve_progress(progress, "embeddings")
        if self._disk is None and self.n > self.capacity:
            warnings.warn(
                f"{self.n} slices do not fit in budget_bytes={self.budget_bytes} "
                f"({self.capacity} slices); give a cache_dir or a larger budget",
                stacklevel=2,
            )
        before = self.stats["computed"]
        step = self.batch_size
        for start in range(0, self.n, step):
            if is_cancelled(cancel):
                break
            group = [i for i in range(start, min(self.n, start + step)) if not self.is_cached(i)]
            if group:
                self._make_ready(group)
            if progress is not None:
                progress(min(self.n, start + step), self.n)
        return self.stats["computed"] - before

    def clear(self, disk: bool = False) -> None:
        """Forget the in-memory embeddings (and delete the disk cache too with ``disk=True``)."""
        with self._lock:
            self._mem.clear()
            if disk and self._disk is not None:
                self._disk.delete()
                self._disk = ZarrSliceCache(self.path, self.key, self.n, self._ident)
