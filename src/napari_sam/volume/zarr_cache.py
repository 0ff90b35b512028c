"""The on-disk half of :class:`napari_sam.volume.store.EmbeddingStore`, and the hashes that key it.

Layout of one cache, ``<cache_dir>/<key>.zarr`` (zarr v3 group):

- attributes: ``format``, ``version``, ``key`` (the folder name), ``ident`` (what was hashed, for
  people), ``sizes`` ([original_size, input_size] once the first slice is written);
- ``features``: (n, C, h, w) float16, one chunk per slice (zarr's default zstd compression);
- ``done``: (n,) uint64, one chunk per slice: the digest of the slice's raw bytes, 0 = not written.
  It is written after the features, so an interrupted write leaves the slice marked not done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

STORE_FORMAT = "napari-sam-embeddings"
STORE_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hex digest of arch, img_size, pixel mean/std and a strided sample of every state-dict tensor
    (names, shapes, dtypes and up to 4096 evenly spaced values each: fast even for ViT-H)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{getattr(model, 'arch', type(model).__name__)}|{getattr(model, 'img_size', '')}".encode())
    tensors = dict(model.state_dict())
    for name in ("pixel_mean", "pixel_std"):  # non-persistent buffers in napari_sam.models.sam
        if hasattr(model, name):
            tensors[name] = getattr(model, name)
    for name, t in sorted(tensors.items()):
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float32)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def slice_digest(arr: np.ndarray) -> int:
    """Non-zero uint64 digest (blake2b) of an array's shape, dtype and raw bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=8)
    h.update(a.data)
    return int.from_bytes(h.digest(), "little") | 1


def ident_key(ident: dict) -> str:
    """40-hex-digit key of a JSON-able description of data, model and preprocessing."""
    return hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=20).hexdigest()


class ZarrSliceCache:
    """Per-slice float16 features on disk for one key; thread-safe.

    Opening checks the attributes (format, version, key) and the array shapes; anything that does
    not match, or cannot be read, is deleted and started afresh (``rebuilt`` is then True).
    """

    def __init__(self, path: Path, key: str, n: int, ident: dict) -> None:
        import zarr

        self.path, self.key, self.n = Path(path), key, n
        self._lock = threading.Lock()
        self.done = np.zeros(n, np.uint64)
        self.sizes: tuple[tuple[int, int], tuple[int, int]] | None = None
        self.rebuilt = False
        self._group: Any = None
        if self.path.exists():
            try:
                g = zarr.open_group(str(self.path), mode="r+")
                ok = g.attrs.get("key") == key and g.attrs.get("version") == STORE_VERSION
                ok = ok and g.attrs.get("format") == STORE_FORMAT
                if ok and "done" in g:
                    ok = g["done"].shape == (n,) and g["features"].shape[0] == n
                    if ok:
                        self.done = np.asarray(g["done"][:], np.uint64)
                        self.sizes = tuple(tuple(int(v) for v in s) for s in g.attrs["sizes"])
            except Exception:
                ok = False
            if ok:
                self._group = g
                return
            shutil.rmtree(self.path, ignore_errors=True)  # stale, foreign or broken
            self.rebuilt = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._group = zarr.open_group(str(self.path), mode="w")
        self._group.attrs.update(
            {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "key": key,
                "ident": json.loads(json.dumps(ident)),
            }
        )

    def read(self, i: int) -> torch.Tensor | None:
        """(1, C, h, w) float16 features of slice i, or None when not done or unreadable."""
        if not self.done[i]:
            return None
        try:
            with self._lock:
                arr = self._group["features"][i]
        except Exception:
            return None  # a torn or corrupt chunk: the caller recomputes and overwrites it
        return torch.from_numpy(np.ascontiguousarray(arr))[None]

    def write(self, i: int, feats: torch.Tensor, digest: int, sizes) -> None:
        """Store (1, C, h, w) float16 ``feats`` of slice i, then mark it done with ``digest``."""
        with self._lock:
            if "features" not in self._group:
                c_h_w = tuple(feats.shape[1:])
                g = self._group
                g.create_array(
                    "features", shape=(self.n, *c_h_w), dtype="float16", chunks=(1, *c_h_w), fill_value=0
                )
                g.create_array("done", shape=(self.n,), dtype="uint64", chunks=(1,), fill_value=0)
                g.attrs["sizes"] = [list(s) for s in sizes]
                self.sizes = tuple(tuple(s) for s in sizes)
            self._group["features"][i] = feats[0].numpy()
            self._group["done"][i] = np.uint64(digest)  # last: marks the slice complete
            self.done[i] = digest

    def nbytes(self) -> int:
        """Bytes on disk."""
        if not self.path.exists():
            return 0
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def delete(self) -> None:
        """Remove the folder."""
        with self._lock:
            shutil.rmtree(self.path, ignore_errors=True)
