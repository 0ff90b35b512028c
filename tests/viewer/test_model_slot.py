"""``ModelSlot``: the model, its interactive and background predictors, versions and tiles."""

from __future__ import annotations

import pytest

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import TiledPredictor
from napari_sam.errors import SamUserError
from napari_sam.viewer.model_slot import ModelSlot


def test_set_versions_and_predictors(tiny_sam):
    slot = ModelSlot()
    with pytest.raises(SamUserError, match="no SAM model"):
        slot.require()
    assert slot.set_tiled(True) is False and slot.tiled  # no predictor yet: nothing changed
    assert slot.set(tiny_sam, device="cpu") is tiny_sam
    assert slot.name == "tiny_test" and slot.device == "cpu" and slot.version == 1
    assert isinstance(slot.require(), TiledPredictor) and slot.tag == (1, True)
    bg = slot.background_predictor()
    assert isinstance(bg, SamPredictor) and bg.model is tiny_sam and slot.background_predictor() is bg
    assert slot.set_tiled(False) is True and isinstance(slot.predictor, SamPredictor)
    assert slot.version == 1 and slot.background_predictor() is bg  # same model
    assert slot.set_tiled(False) is False
    slot.set(tiny_sam, device="cpu")
    assert slot.version == 2 and slot.background_predictor() is not bg
