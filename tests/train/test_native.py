"""Native-resolution training windows (as TiledPredictor's tiles), the embedding cache, and training from it."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.engine.transforms import make_transform, model_input
from napari_sam.models.sam import build_model
from napari_sam.train.data import Sample
from napari_sam.train.loop import TrainConfig, Trainer
from napari_sam.train.native import CachedWindows, build_cache, native_window, window_input, windows_for


def _sample(size=(150, 200), seed=0, modality="fluorescence") -> Sample:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    img = rng.normal(40, 5, size)
    lab = np.zeros(size, np.int32)
    for i in range(6):
        cy, cx, r = rng.uniform(15, size[0] - 15), rng.uniform(15, size[1] - 15), rng.uniform(6, 10)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m], lab[m] = 180, i + 1
    img = np.clip(img, 0, 255).astype(np.uint8)
    return Sample(str(seed), np.repeat(img[..., None], 3, 2), lab, modality)


def test_native_window_is_a_tile_at_the_frame_origin():
    rng = np.random.default_rng(0)
    s = _sample()
    for _ in range(10):
        w = native_window(s, rng, side=128)
        assert w.image.shape == (128, 128, 3) and w.offset == (0, 0)
        h, wd = w.valid.sum(0).max(), w.valid.sum(1).max()
        assert w.valid[:h, :wd].all() and not w.valid[h:].any() and not w.valid[:, wd:].any()
        assert (w.labels[~w.valid] == 0).all() and (w.image[~w.valid] == 0).all() and (w.labels > 0).any()
    plain = native_window(s, rng, side=256, augment=False)  # the whole image fits: an exact copy, padded
    np.testing.assert_array_equal(plain.image[:150, :200], s.image)
    np.testing.assert_array_equal(plain.labels[:150, :200], s.labels)


def test_window_input_is_the_predictors_tile_input():
    """LiteMedSAM's min-max over the crop and zero padding, as ``model_input`` on a native tile."""
    model = build_model("lite_medsam_native")
    s = _sample(size=(100, 180))
    w = native_window(s, np.random.default_rng(1), side=256, augment=False)
    ref, _, _ = model_input(s.image, model, make_transform(model), torch.device("cpu"), native=True)
    torch.testing.assert_close(window_input(w, "min_max"), ref[0])


def test_windows_per_sample():
    assert windows_for(_sample(), 256) == 1
    assert windows_for(_sample(modality="brightfield"), 256) == 6
    big = Sample("b", np.zeros((1024, 1400, 3), np.uint8), np.zeros((1024, 1400), np.int32), "fluorescence")
    assert windows_for(big, 256) == 3


def test_cache_round_trip_and_training_from_it(tmp_path):
    """Shards hold the frozen encoder's embeddings; a trainer on the cache never runs the encoder
    and trains the decoder."""
    torch.manual_seed(0)
    model = build_model("nano", img_size=128)
    samples = [_sample(seed=k) for k in range(3)]
    logs: list[str] = []
    n = build_cache(model, samples, tmp_path, seed=0, side=128, shard=2, log=logs.append)
    assert n == 3 and len(list(tmp_path.glob("shard_*.pt"))) == 2 and logs
    assert build_cache(model, samples, tmp_path, seed=0, side=128, shard=2, log=logs.append) == 3  # resumable
    cache = CachedWindows(tmp_path)
    wins, embs = cache.draw(np.random.default_rng(0), 2)
    assert embs.shape == (2, 128, 16, 16) and embs.dtype == torch.float32 and wins[0].labels.shape == (128, 128)
    first = torch.load(sorted(tmp_path.glob("shard_*.pt"))[0], weights_only=True)
    with torch.inference_mode():
        x = window_input(native_window(samples[0], np.random.default_rng(5), 128), "mean_std")[None]
        assert model.image_encoder(x).shape[1:] == first["embeddings"].shape[1:]

    enc_before = [p.detach().clone() for p in model.image_encoder.parameters()]
    dec_before = [p.detach().clone() for p in model.mask_decoder.parameters()]
    model.image_encoder.forward = None  # the encoder must not run
    cfg = TrainConfig(steps=3, batch=2, objects=2, lr=1e-3, warmup=1, cache=str(tmp_path), native=True,
                      decoder_crops=(8,), focal_weight=1.0)
    tr = Trainer(model, [], cfg)
    out = [tr.step() for _ in range(3)]
    assert all(np.isfinite(o["loss"]) for o in out)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, model.image_encoder.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(dec_before, model.mask_decoder.parameters(), strict=True))


def test_cache_built_in_parts_equals_one_process(tmp_path):
    """``part=(i, n)``: n processes each embed every n-th shard of the same windows; together they
    write exactly the shards one process writes."""
    torch.manual_seed(0)
    model = build_model("nano", img_size=128)
    samples = [_sample(seed=k) for k in range(3)]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    build_cache(model, samples, whole, seed=0, side=128, shard=1, log=lambda m: None)
    build_cache(model, samples, parts, seed=0, side=128, shard=1, part=(1, 2), log=lambda m: None)
    assert sorted(p.name for p in parts.glob("shard_*.pt")) == ["shard_0001.pt"]
    build_cache(model, samples, parts, seed=0, side=128, shard=1, part=(0, 2), log=lambda m: None)
    names = sorted(p.name for p in whole.glob("shard_*.pt"))
    assert names == sorted(p.name for p in parts.glob("shard_*.pt")) and len(names) == 3
    for name in names:
        a, b = (torch.load(d / name, weights_only=True) for d in (whole, parts))
        assert torch.equal(a["embeddings"], b["embeddings"]) and torch.equal(a["labels"], b["labels"])
