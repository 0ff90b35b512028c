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


def test_tiles_follow_the_model_unless_chosen(tiny_sam):
    """Default: tiles for a model that embeds at its own pixel scale (``preprocessing.zoom`` set, the
    nano models), none for one that fills its input (SAM); a choice sticks across models; "model"
    goes back to the default."""
    from dataclasses import replace

    from _synthetic import make_tiny_sam

    native = make_tiny_sam()
    native.preprocessing = replace(native.preprocessing, zoom=1.0)
    slot = ModelSlot()
    assert slot.tiled is False  # no model
    slot.set(tiny_sam, device="cpu")
    assert slot.tiled is False and isinstance(slot.predictor, SamPredictor)
    slot.set(native, device="cpu")
    assert slot.tiled is True and isinstance(slot.predictor, TiledPredictor) and slot.tag == (2, True)
    assert slot.set_tiled(False) is True and isinstance(slot.predictor, SamPredictor)
    slot.set(native, device="cpu")
    assert slot.tiled is False  # the user's choice is kept
    assert slot.set_tiled("model") is True and slot.tiled is True
    slot.set(tiny_sam, device="cpu")
    assert slot.tiled is False


def test_a_model_that_fails_to_load_leaves_the_slot_as_it_was(tiny_sam):
    slot = ModelSlot()
    slot.set(tiny_sam, device="cpu")
    before = (slot.model, slot.predictor, slot.version)
    with pytest.raises(Exception, match="banana"):
        slot.set(tiny_sam, device="banana")
    assert (slot.model, slot.predictor, slot.version) == before
