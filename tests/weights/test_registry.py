"""The model registry is consistent with the architectures and the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import napari_sam
from napari_sam.models import available_archs
from napari_sam.weights.registry import DEFAULT_MODEL, REGISTRY, get_model_info, list_models


def test_entries_name_known_architectures_and_a_source() -> None:
    assert [info.name for info in list_models()] == list(REGISTRY)
    for info in list_models():
        assert info.arch in available_archs(), info.name
        if not (info.url or info.packaged or info.in_package):  # no direct download: the description says what to do
            assert "by hand" in info.description and info.homepage, info.name
        assert info.sha256 is None or len(info.sha256) == 64


def test_default_model_ships_with_the_package() -> None:
    info = get_model_info(DEFAULT_MODEL)
    assert info.packaged
    path = Path(napari_sam.__file__).parent / info.packaged
    assert path.is_file() and path.stat().st_size < 20 * 10**6  # the size limit


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="vit_b"):
        get_model_info("vit_x")


def test_automatic_defaults():
    from napari_sam.weights.registry import automatic_defaults

    sam = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7}
    assert automatic_defaults("nano_nuclei") == {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.9,
                                                 "box_nms_thresh": 0.2}
    assert automatic_defaults("vit_b") == automatic_defaults("/some/file.pth") == automatic_defaults(None) == sam


def test_automatic_params_fill_only_what_is_missing():
    from napari_sam.weights.registry import automatic_params

    assert automatic_params("vit_b", pred_iou_thresh=0.3, box_nms_thresh=None) == {
        "pred_iou_thresh": 0.3, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7}
    with pytest.raises(TypeError, match="crop_n_layers"):
        automatic_params("vit_b", crop_n_layers=1)


def test_automatic_settings_add_the_models_tiles():
    """lite_medsam_nano_nuclei segments in 256-px tiles (overlap 64, duplicates across tiles at its box NMS);
    what the caller gives wins, ``tile_size=None`` included; other keywords pass through."""
    from napari_sam.weights.registry import automatic_settings

    own = automatic_settings("lite_medsam_nano_nuclei", {"points_per_side": 16, "pred_iou_thresh": None})
    assert own == {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.9,
                   "box_nms_thresh": 0.2, "tile_size": 256, "tile_overlap": 64, "crop_nms_thresh": 0.2}
    assert automatic_settings("lite_medsam_nano_nuclei", {"tile_overlap": 32})["tile_overlap"] == 32
    assert automatic_settings("lite_medsam_nano_nuclei", {"tile_size": None})["tile_size"] is None
    assert automatic_settings("lite_medsam_nuclei", {})["tile_size"] == 256
    for name in ("nano_nuclei", "vit_b", None, "/some/file.pth"):
        assert "tile_size" not in automatic_settings(name, {})


def test_volume_overrides_are_stop_rules():
    from dataclasses import fields

    from napari_sam.volume.stops import StopRules
    from napari_sam.weights.registry import volume_overrides

    names = {f.name for f in fields(StopRules)}
    for info in list_models():
        assert set(dict(info.volume)) <= names, info.name
        assert volume_overrides(info.name) == dict(info.volume)
    assert volume_overrides("vit_b") == volume_overrides("/some/file.pth") == volume_overrides(None) == {}
    assert volume_overrides("lite_medsam_nuclei")  # its rules were measured (docs/volume.md)
