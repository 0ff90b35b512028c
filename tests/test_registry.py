"""The model registry is consistent with the architectures and the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import napari_sam
from napari_sam.models import available_archs
from napari_sam.registry import DEFAULT_MODEL, REGISTRY, get_model_info, list_models


def test_entries_name_known_architectures_and_a_source() -> None:
    assert [info.name for info in list_models()] == list(REGISTRY)
    for info in list_models():
        assert info.arch in available_archs(), info.name
        if not (info.url or info.packaged):  # no direct download: the description says what to do
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


def test_automatic_thresholds():
    from napari_sam.registry import automatic_thresholds

    assert automatic_thresholds("nano_nuclei") == (0.5, 0.8)
    assert automatic_thresholds("vit_b") == (0.88, 0.95)
    assert automatic_thresholds("/some/file.pth") == automatic_thresholds(None) == (0.88, 0.95)
