"""``napari-sam batch``: the command-line contract scripts rely on (names, summary, exit status)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import zarr
from _synthetic import balls_volume

from napari_sam import cli
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.batch.tasks import get_model
from napari_sam.engine.predictor import SamPredictor
from napari_sam.viewer.sample_data import synthetic_nuclei
from napari_sam.volume.propagate import segment_volume
from napari_sam.weights.registry import automatic_params

BASE = ["--workers", "0", "--model", "nano_nuclei", "--points-per-side", "4", "-q"]


def test_outputs_summary_and_exit_status(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "a.tif", synthetic_nuclei((96, 128), n=8))
    out = tmp_path / "out"
    assert cli.main(["batch", str(tmp_path / "a.tif"), "--output", str(out), *BASE]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "summary.csv"]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["input", "output", "status", "objects", "seconds", "message"]
    assert rows[0]["status"] == "done" and rows[0]["output"] == str(out / "a_labels.tif")
    assert "1 done" in capsys.readouterr().out

    # a missing input fails after the others finished: exit status 1
    args = ["batch", str(tmp_path / "a.tif"), str(tmp_path / "gone.png"), "-o", str(out), *BASE]
    assert cli.main(args) == 1
    report = capsys.readouterr().out
    assert "1 skipped" in report and "1 failed" in report and "gone.png" in report
    assert cli.main(args + ["--overwrite"]) == 1
    assert "1 done" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "a.tif", synthetic_nuclei((96, 128), n=8))
    assert cli.main(["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "--mode", "prompts", *BASE]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "--model", "no_such_model",
                     "--workers", "0"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "--mode", "sideways"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["batch", str(tmp_path / "a.tif")])  # --output is required


def test_tile_size_runs_a_large_image_in_tiles(tmp_path) -> None:
    """--tile-size/--tile-overlap: the labels of AutomaticMaskGenerator(tile_size=..., tile_overlap=...)."""
    image = synthetic_nuclei((560, 640), n=60, seed=2)  # 2 x 2 tiles of nano's input side
    tifffile.imwrite(tmp_path / "a.tif", image)
    args = ["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"), "--workers", "0", "--model", "nano_nuclei",
            "--points-per-side", "16", "--tile-size", "512", "--tile-overlap", "128", "-q"]
    assert cli.main(args) == 0
    expected = AutomaticMaskGenerator(get_model("nano_nuclei"), **automatic_params("nano_nuclei"), points_per_side=16,
                                      tile_size=512, tile_overlap=128).generate_labels(image, progress=None)
    assert expected.max() > 1  # (the merge itself is checked on 40 nuclei in test_batch.py)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a_labels.tif"), expected)


def test_volume_from_prompts_on_chosen_slices(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--mode volume --prompts FILE: the labels of segment_volume with the same seeds in (x, y)."""
    image, _ = balls_volume()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("image,object,slice,type,row,col,row1,col1,label\nvol,1,4,point,20,22,,,1\n"
                       "vol,1,6,point,21,22,,,1\nvol,2,7,box,34,32,54,52,\n")
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "vol.tif"), "--output", str(out), "--mode", "volume", "--prompts", str(prompts),
            "--workers", "0", "--model", "nano_nuclei", "-q"]
    assert cli.main(args) == 0
    assert "1 done" in capsys.readouterr().out
    seeds = {1: {4: {"points": [[22, 20]]}, 6: {"points": [[22, 21]]}}, 2: {7: {"box": [32, 34, 52, 54]}}}
    expected = segment_volume(SamPredictor(get_model("nano_nuclei")), image, seeds=seeds, progress=None).to_labels()
    np.testing.assert_array_equal(zarr.open_group(str(out / "vol_labels.zarr"), mode="r")["0"][:], expected)

    # neither seeds nor prompts: a usage error naming both options
    assert cli.main(["batch", str(tmp_path / "vol.tif"), "-o", str(out), "--mode", "volume", *BASE]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "--prompts" in err
