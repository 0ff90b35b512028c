"""``lite_medsam_nano_nuclei``: the packaged distilled student (whole model, float16), its registry hash,
strict loading without any other package, and a click that segments a nucleus-like disc."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from napari_sam.engine.tiling import TiledPredictor
from napari_sam.models.sam import build_model
from napari_sam.weights import download, loading, registry

INFO = registry.REGISTRY["lite_medsam_nano_nuclei"]
PATH = download.model_path("lite_medsam_nano_nuclei")


def test_packaged_file_matches_the_registry() -> None:
    assert INFO.packaged == "_weights/lite_medsam_nano_nuclei.pt" and INFO.base is None and INFO.extra is None
    assert INFO.arch == "lite_medsam_nano" and INFO.licence == "Apache-2.0"
    assert hashlib.sha256(PATH.read_bytes()).hexdigest() == INFO.sha256
    assert PATH.stat().st_size <= 20_000_000 and INFO.size_mb == pytest.approx(PATH.stat().st_size / 1e6, abs=0.1)


def test_whole_model_loads_strictly_as_float32() -> None:
    part = loading.load_state_dict(PATH)
    assert part.keys() == build_model("lite_medsam_nano").state_dict().keys()
    model = loading.load_model("lite_medsam_nano_nuclei", device="cpu")
    assert model.arch == "lite_medsam_nano" and model.preprocessing.zoom == 1.0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_one_click_segments_a_nucleus() -> None:
    yy, xx = np.mgrid[:300, :300]
    disc = (yy - 200) ** 2 + (xx - 120) ** 2 < 12**2
    img = np.random.default_rng(0).normal(30, 4, (300, 300))
    img[disc] = 170
    img = np.clip(img, 0, 255).astype(np.uint8)
    p = TiledPredictor(loading.load_model("lite_medsam_nano_nuclei", device="cpu"))  # tiles: how it runs
    p.set_image(img)
    masks, scores, _ = p.predict(point_coords=np.array([[120.0, 200.0]]), point_labels=np.array([1]))
    m = masks[int(np.argmax(scores))]
    assert (m & disc).sum() / (m | disc).sum() > 0.85


def test_segment_everything_at_its_registry_thresholds_finds_the_nuclei() -> None:
    """At SAM's thresholds (0.88 / 0.95) nothing passes with this model; its registry's find the discs."""
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.engine.predictor import SamPredictor

    rng = np.random.default_rng(1)
    img = rng.normal(30, 4, (256, 256))
    yy, xx = np.mgrid[:256, :256]
    centres = [(60, 60), (60, 180), (180, 70), (190, 190)]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 14**2] = 170
    img = np.clip(img, 0, 255).astype(np.uint8)
    gen = AutomaticMaskGenerator(SamPredictor(loading.load_model("lite_medsam_nano_nuclei", device="cpu")),
                                 points_per_side=16, **registry.automatic_defaults("lite_medsam_nano_nuclei"))
    labels = gen.generate_labels(np.repeat(img[..., None], 3, 2))
    found = {int(labels[cy, cx]) for cy, cx in centres}
    assert 0 not in found and len(found) == 4, found  # each disc found, as an object of its own
