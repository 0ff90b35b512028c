"""The package as pip gets it: the sdist and the wheel build (the wheel from the sdist), pass
``twine check``, and carry the built-in models, the napari manifest and the licence under the
distribution's name, ``napari-sam-engine`` (``napari-sam`` on PyPI is MIC-DKFZ's plugin)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from napari_sam import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_names_agree() -> None:
    """pip's name, the napari manifest's name (npe2 refuses a mismatch) and the constant the code uses."""
    project = _pyproject()["project"]
    manifest = yaml.safe_load((ROOT / "src" / "napari_sam" / "napari.yaml").read_text())
    assert project["name"] == manifest["name"] == DISTRIBUTION == "napari-sam-engine"
    assert project["entry-points"]["napari.manifest"] == {DISTRIBUTION: "napari_sam:napari.yaml"}
    assert all(c["id"].startswith(f"{DISTRIBUTION}.") for c in manifest["contributions"]["commands"])
    assert project["scripts"]["napari-sam"] == "napari_sam.cli:main"


@pytest.mark.slow
def test_sdist_and_wheel_build_and_pass_twine(tmp_path: Path) -> None:
    pytest.importorskip("build")
    pytest.importorskip("twine")
    # no --sdist/--wheel: build makes the sdist, then the wheel from the unpacked sdist, so a file
    # missing from the sdist is missing from the wheel too
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    sdists = sorted(tmp_path.glob("*.tar.gz"))
    wheels = sorted(tmp_path.glob("*.whl"))
    assert [p.name for p in sdists] == ["napari_sam_engine-0.1.0.tar.gz"]
    assert [p.name for p in wheels] == ["napari_sam_engine-0.1.0-py3-none-any.whl"]
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sdists + wheels)],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout

    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        info = "napari_sam_engine-0.1.0.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        manifest = yaml.safe_load(whl.read("napari_sam/napari.yaml"))
        for name in ("nano_nuclei.pt", "nano_nuclei_v1.pt", "lite_medsam_nuclei.pt", "lite_medsam_nano_nuclei.pt"):
            member = f"napari_sam/_weights/{name}"
            assert member in names, member
            assert whl.getinfo(member).file_size == (ROOT / "src" / "napari_sam" / "_weights" / name).stat().st_size
    assert f"Name: {DISTRIBUTION}\n" in metadata and "License-Expression: Apache-2.0" in metadata
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE"} <= names
    assert f"{DISTRIBUTION} = napari_sam:napari.yaml" in entry_points and "napari-sam = napari_sam.cli:main" in entry_points
    assert manifest["name"] == DISTRIBUTION
    # the sources only: no tests, benches or caches in the wheel
    assert not any(n.startswith(("tests/", "bench/")) or "__pycache__" in n for n in names)
    assert "napari_sam/engine/predictor.py" in names and "napari_sam/models/sam2/hiera.py" in names
