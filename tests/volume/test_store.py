"""EmbeddingStore: memory budget, disk cache keys and invalidation, threads, prefetch order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _synthetic import ellipsoid_volume, tiny_sam

from napari_sam.engine.predictor import SamPredictor
from napari_sam.volume.store import EmbeddingStore, slice_digest


class CountingPredictor(SamPredictor):
    """A real SamPredictor that records which images it encoded, in order."""

    def __init__(self, model):
        super().__init__(model, device="cpu")
        self.calls: list[int] = []
        self.batches: list[int] = []

    def encode_batch(self, images, *a, **k):
        # the volumes below write the slice index at (0, 0)
        self.calls += [int(np.asarray(image).reshape(-1)[0]) for image in images]
        self.batches.append(len(images))
        return super().encode_batch(images, *a, **k)


@pytest.fixture(scope="module")
def model():
    return tiny_sam()


def volume(n=8, rgb=False, seed=0):
    img, _, _ = ellipsoid_volume((n, 32, 40), n_objects=1, seed=seed, rgb=rgb)
    img[:, 0, 0] = np.arange(n)[:, None] if rgb else np.arange(n)
    return img


def test_get_matches_predictor_and_caches(model):
    p = CountingPredictor(model)
    vol = volume()
    store = EmbeddingStore(p, vol)
    emb = store.get(3)
    ref = p.compute_embedding(vol[3])
    assert emb.features.shape == ref.features.shape and emb.features.dtype == torch.float32
    assert emb.original_size == (32, 40) and emb.input_size == ref.input_size
    torch.testing.assert_close(emb.features, ref.features, atol=2e-3, rtol=2e-3)  # float16 storage
    store.get(3)
    store.get(-5)  # negative indices count from the end: slice 3 again
    assert store.stats["computed"] == 1 and store.stats["memory_hits"] == 2
    with pytest.raises(IndexError):
        store.get(8)


def test_budget_lru(model):
    p = CountingPredictor(model)
    store = EmbeddingStore(p, volume(), budget_bytes=0)
    per = store.slice_nbytes
    store.budget_bytes = int(2.5 * per)
    for i in (0, 1, 2, 0, 3):
        store.get(i)
    assert store.capacity == 2 and store.nbytes <= store.budget_bytes
    assert list(store._mem) == [0, 3]  # 1 and 2 were least recently used
    store.budget_bytes = 0
    store.get(4)
    assert list(store._mem) == [4]  # the most recent slice is always kept


def test_axis_rgb_and_contrast(model):
    p = CountingPredictor(model)
    vol = np.moveaxis(volume(rgb=True), 0, 1)  # (H, n, W, 3), slices along axis 1
    store = EmbeddingStore(p, vol, axis=1)
    assert len(store) == 8 and store.slice(2).shape == (32, 40, 3) and store.rgb
    assert store.get(2).original_size == (32, 40)
    v16 = volume().astype(np.uint16) * 100
    s16 = EmbeddingStore(p, v16)
    assert s16.contrast_limits is not None  # one pair for the whole volume
    with pytest.raises(ValueError, match="data\\[t\\]"):
        EmbeddingStore(p, np.zeros((2, 3, 8, 8), np.uint8))


def test_disk_reopen_reuses(model, tmp_path):
    vol = volume()
    p = CountingPredictor(model)
    store = EmbeddingStore(p, vol, cache_dir=tmp_path)
    assert store.precompute() == 8
    assert store.path.name == f"{store.key}.zarr" and store.disk_nbytes() > 0
    p2 = CountingPredictor(model)
    again = EmbeddingStore(p2, vol.copy(), cache_dir=tmp_path)
    assert again.key == store.key and all(again.is_cached(i) for i in range(8))
    torch.testing.assert_close(again.get(5).features, store.get(5).features)
    assert p2.calls == [] and again.stats["disk_hits"] == 1


def test_keys_change_with_data_model_preprocessing(model, tmp_path):
    vol = volume()
    p = CountingPredictor(model)
    base = EmbeddingStore(p, vol, cache_dir=tmp_path).key
    other = vol.copy()
    other[4, 10, 10] ^= 1
    assert EmbeddingStore(p, other, cache_dir=tmp_path).key != base
    assert EmbeddingStore(p, vol, cache_dir=tmp_path, contrast_limits=(0, 100)).key != base
    assert EmbeddingStore(CountingPredictor(tiny_sam(seed=1)), vol, cache_dir=tmp_path).key != base
    assert EmbeddingStore(p, np.ascontiguousarray(vol.transpose(1, 0, 2)), axis=1).key != base


def test_stale_foreign_and_incomplete_stores_are_rebuilt(model, tmp_path):
    import zarr

    vol = volume()
    store = EmbeddingStore(CountingPredictor(model), vol, cache_dir=tmp_path)
    store.precompute()
    g = zarr.open_group(str(store.path), mode="r+")
    g.attrs["key"] = "someone-else"  # foreign / stale attributes: never used
    p = CountingPredictor(model)
    again = EmbeddingStore(p, vol, cache_dir=tmp_path)
    assert again.stats["rebuilt"] == 1 and not again.is_cached(0)
    again.precompute()
    assert sorted(p.calls) == list(range(8))
    g = zarr.open_group(str(store.path), mode="r+")
    g["done"][2] = 0  # a slice whose write did not finish
    (store.path / "features" / "c" / "5" / "0" / "0" / "0").write_bytes(b"garbage")  # a torn chunk of slice 5
    p = CountingPredictor(model)
    third = EmbeddingStore(p, vol, cache_dir=tmp_path)
    assert third.stats["rebuilt"] == 0 and not third.is_cached(2)
    third.precompute()
    for i in range(8):
        third.get(i)
    assert sorted(p.calls) == [2, 5]  # only the broken slices were encoded again


def test_lazy_hash_checks_each_slice(model, tmp_path):
    vol = volume(n=9)
    EmbeddingStore(CountingPredictor(model), vol, cache_dir=tmp_path, hash_mode="lazy").precompute()
    vol[2, 5:9, 5:9] = 255  # not a sampled slice (0, 4, 8): same key, but slice 2's digest differs
    p = CountingPredictor(model)
    store = EmbeddingStore(p, vol, cache_dir=tmp_path, hash_mode="lazy")
    for i in range(9):
        store.get(i)
    assert p.calls == [2]
    assert int(store._disk.done[2]) == slice_digest(vol[2])


def test_threads_compute_each_slice_once(model):
    p = CountingPredictor(model)
    store = EmbeddingStore(p, volume())
    threads = [
        threading.Thread(target=lambda k=k: [store.get((i + k) % 8) for i in range(8)]) for k in range(4)
    ]
    threads.append(threading.Thread(target=store.prefetch, args=(4, 3)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.calls) == list(range(8))


def test_prefetch_order_and_capacity(model):
    p = CountingPredictor(model)
    store = EmbeddingStore(p, volume())
    assert store.prefetch(5, radius=2) == 5
    assert p.calls == [5, 6, 4, 7, 3]
    p.calls.clear()
    store.budget_bytes = 2 * store.slice_nbytes  # without a disk cache, no more than fits
    assert store.prefetch(1, radius=3) == 2 and p.calls == [1, 2]
    assert list(store._mem) == [1, 2]


def test_precompute_progress_and_cancel(model):
    p = CountingPredictor(model)
    store = EmbeddingStore(p, volume())
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done == 3:
            stop.set()

    assert store.precompute(progress=progress, cancel=stop) == 3
    assert seen == [(1, 8), (2, 8), (3, 8)]
    with pytest.warns(UserWarning, match="do not fit"):
        EmbeddingStore(p, volume(), budget_bytes=1).precompute(cancel=lambda: True)


def test_precompute_encodes_in_batches(model):
    """``precompute`` encodes ``batch_size`` slices at a time (8 on a GPU, 1 on a CPU by default):
    the same embeddings as one at a time, each slice once, slices already cached skipped."""
    vol = volume(7)
    one = EmbeddingStore(SamPredictor(model, device="cpu"), vol)
    assert one.batch_size == 1
    p = CountingPredictor(model)
    store = EmbeddingStore(p, vol)
    store.get(2)  # cached before: not encoded again
    store.batch_size = 3
    assert store.precompute() == 6
    assert p.batches == [1, 2, 3, 1] and sorted(p.calls) == list(range(7))
    for i in range(7):
        torch.testing.assert_close(store.get(i).features, one.get(i).features, rtol=1e-4, atol=1e-3)
