"""SAM 2.1 checkpoints: an official-format file (``{"model": state_dict}``, here Meta's tiny with random
weights) loads strictly into our own networks through ``load_model``, its architecture recognised from
the keys, and the loaded model predicts as Meta's; the registry lists the four official files."""

from __future__ import annotations

import _sam2_reference as ref
import numpy as np
import torch

from napari_sam.engine.predictor import SamPredictor
from napari_sam.weights.loading import load_model
from napari_sam.weights.registry import get_model_info


def test_official_file_loads_strictly_into_our_networks(tmp_path):
    meta = ref.build_reference("sam2.1_hiera_tiny", seed=2)
    path = ref.save_official(meta, tmp_path / "sam2.1_hiera_tiny.pt")
    model = load_model(str(path), device="cpu")
    assert type(model).__name__ == "Sam2" and model.arch == "sam2.1_hiera_tiny"
    assert type(model.image_encoder).__module__.startswith("napari_sam.")  # ours, not Meta's
    assert type(model.memory_attention).__module__.startswith("napari_sam.")
    ours_sd, theirs_sd = model.state_dict(), meta.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(torch.equal(ours_sd[k], theirs_sd[k]) for k in theirs_sd)

    from sam2.sam2_image_predictor import SAM2ImagePredictor

    img = np.kron(np.random.default_rng(0).integers(0, 255, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    mine = SamPredictor(model, device="cpu")
    mine.set_image(img)
    theirs = SAM2ImagePredictor(meta)
    with torch.inference_mode():
        theirs.set_image(img)
        m2, s2, _ = theirs.predict(point_coords=np.array([[40.0, 70.0]]), point_labels=np.array([1]))
    m1, s1, _ = mine.predict(point_coords=np.array([[40.0, 70.0]]), point_labels=np.array([1]))
    assert (m1 == m2).mean() >= 0.999
    np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_registry_lists_the_official_sam21_files():
    for size in ("tiny", "small", "base_plus", "large"):
        info = get_model_info(f"sam2.1_hiera_{size}")
        assert info.url.endswith(f"/092824/sam2.1_hiera_{size}.pt") and info.arch == info.name
        assert info.sha256 is None  # none published, none measured here: not guessed
