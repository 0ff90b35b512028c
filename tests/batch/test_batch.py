"""segment_batch in this process (workers=0): the same labels as the engine's own calls, reruns, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from _synthetic import ellipsoid_volume

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.batch import segment_batch
from napari_sam.batch.tasks import get_model, model_loads
from napari_sam.batch.writing import VolumeWriter, clean_partials, read_summary
from napari_sam.engine.predictor import SamPredictor
from napari_sam.viewer.sample_data import synthetic_nuclei
from napari_sam.volume.propagate import segment_volume
from napari_sam.weights.registry import automatic_params

MODEL = "nano_nuclei"
PARAMS = {"points_per_side": 6}


def _generator() -> AutomaticMaskGenerator:
    return AutomaticMaskGenerator(get_model(MODEL), **automatic_params(MODEL), **PARAMS)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for k in range(2):
        tifffile.imwrite(src / f"img{k}.tif", synthetic_nuclei((128, 160), n=12, seed=k))
    return src


def test_everything_matches_the_generator_and_a_rerun_skips(folder, tmp_path) -> None:
    out = tmp_path / "out"
    seen = []
    report = segment_batch(folder, out, model=MODEL, workers=0, params=PARAMS, progress=lambda d, t: seen.append((d, t)))
    assert report.ok and report.count("done") == 2 and seen[-1] == (2, 2)
    for k in range(2):
        expected = _generator().generate_labels(synthetic_nuclei((128, 160), n=12, seed=k))
        np.testing.assert_array_equal(tifffile.imread(out / f"img{k}_labels.tif"), expected)
    rows = read_summary(out / "summary.csv")
    assert [r["status"] for r in rows.values()] == ["done", "done"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    loads = model_loads()

    again = segment_batch(folder, out, model=MODEL, workers=0, params=PARAMS)
    assert again.count("skipped") == 2 and again.ok
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tif")} == stamps
    rows2 = read_summary(out / "summary.csv")  # the earlier object counts are kept for skipped inputs
    assert [r["objects"] for r in rows2.values()] == [r["objects"] for r in rows.values()]

    redo = segment_batch(folder, out, model=MODEL, workers=0, params=PARAMS, overwrite=True)
    assert redo.count("done") == 2
    assert model_loads() == loads  # the model stays loaded in this process


def test_bad_input_is_reported_and_the_rest_finish(folder, tmp_path) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    report = segment_batch([folder, tmp_path / "missing.tif"], tmp_path / "out", model=MODEL, workers=0, params=PARAMS)
    status = {r["input"].rsplit("/", 1)[-1]: r["status"] for r in report.records}
    assert status == {"broken.png": "failed", "img0.tif": "done", "img1.tif": "done", "missing.tif": "failed"}
    assert not report.ok and "broken.png" in report.describe()
    assert not (tmp_path / "out" / "broken_labels.tif").exists()


def test_writes_are_atomic(tmp_path) -> None:
    with pytest.raises(RuntimeError), VolumeWriter(tmp_path / "v_labels.zarr", (2, 8, 8)) as w:
        w[0] = np.ones((8, 8))
        raise RuntimeError("crash mid-volume")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary
    (tmp_path / ".a_labels.tif.1234abcd.part").write_bytes(b"half")
    assert clean_partials(tmp_path) == 1 and list(tmp_path.iterdir()) == []


def test_prompts_csv_and_json_in_row_col(folder, tmp_path) -> None:
    image = tifffile.imread(folder / "img0.tif")
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text(
        "image,object,type,row,col,row1,col1,label\n"
        "img0.tif,a,point,40,50,,,1\nimg0.tif,a,point,90,20,,,0\nimg0,b,box,10,100,60,150,\n"
    )
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps({"img0.tif": [
        {"points": [[40, 50], [90, 20]], "labels": [1, 0]}, {"box": [10, 100, 60, 150]},
    ]}))
    predictor = SamPredictor(get_model(MODEL))
    predictor.set_image(image)
    a = predictor.predict(np.array([[50, 40], [20, 90]]), np.array([1, 0]), multimask_output=False)[0][0]
    b = predictor.predict(box=np.array([100, 10, 150, 60]), multimask_output=False)[0][0]
    expected = np.zeros(image.shape, np.int32)
    expected[a] = 1
    expected[b & ~a] = 2
    for file in (csv_file, json_file):
        out = tmp_path / file.suffix[1:]
        report = segment_batch(folder, out, mode="prompts", prompts=file, model=MODEL, workers=0)
        assert [r["status"] for r in report.records] == ["done", "failed"]  # img1 has no prompts
        assert "no prompts" in report.records[1]["message"]
        np.testing.assert_array_equal(tifffile.imread(out / "img0_labels.tif"), expected)


def test_stack_everything_is_linked_like_the_widget(tmp_path) -> None:
    stack = np.stack([synthetic_nuclei((96, 96), n=6, seed=3)] * 2 + [synthetic_nuclei((96, 96), n=6, seed=4)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    report = segment_batch(tmp_path / "stack.tif", tmp_path / "out", model=MODEL, workers=0, params=PARAMS)
    assert report.ok and report.records[0]["output"].endswith("stack_labels.zarr")
    written = zarr.open_group(str(tmp_path / "out" / "stack_labels.zarr"), mode="r")
    expected = _generator().generate_labels_stack(stack)
    np.testing.assert_array_equal(written["0"][:], expected)
    assert int(report.records[0]["objects"]) == int(expected.max())


def test_volume_mode_from_seeds_on_ome_zarr(tmp_path) -> None:
    image, labels, _ = ellipsoid_volume((8, 64, 64), n_objects=2, seed=1)
    src = zarr.open_group(str(tmp_path / "vol.ome.zarr"), mode="w")
    src.create_array("0", shape=image.shape, dtype="uint8", chunks=(1, 64, 64))[:] = image
    scale = [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
    src.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "0", "coordinateTransformations": scale}]}]}
    seeds = np.zeros_like(labels)
    seeds[4] = labels[4]
    tifffile.imwrite(tmp_path / "vol_seeds.tif", seeds)
    report = segment_batch(tmp_path / "vol.ome.zarr", tmp_path / "out", mode="volume", seeds=tmp_path, model=MODEL, workers=0)
    assert report.ok, report.describe()
    out = zarr.open_group(str(tmp_path / "out" / "vol_labels.zarr"), mode="r")
    expected = segment_volume(SamPredictor(get_model(MODEL)), image, labels=seeds).to_labels()
    np.testing.assert_array_equal(out["0"][:], expected)
    assert out.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] == scale


def test_import_stays_cheap() -> None:
    code = "import sys, napari_sam, napari_sam.batch; print(any(m.split('.')[0] in ('dask', 'distributed', 'torch') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_an_interrupted_run_resumes(folder, tmp_path) -> None:
    out = tmp_path / "out"
    stop = []
    first = segment_batch(folder, out, model=MODEL, workers=0, params=PARAMS, progress=lambda d, t: stop.append(d),
                          cancel=lambda: bool(stop))
    assert [r["status"] for r in first.records] == ["done", "failed"]
    assert "cancelled" in first.records[1]["message"] and not (out / "img1_labels.tif").exists()
    second = segment_batch(folder, out, model=MODEL, workers=0, params=PARAMS)
    assert [r["status"] for r in second.records] == ["skipped", "done"]


def test_a_large_image_is_one_task_per_tile_with_the_one_process_labels(tmp_path) -> None:
    """tile_size: each tile is a task (its crops' masks come back), merged into generate_labels' labels."""
    from napari_sam.batch.tasks import tile_count

    src = tmp_path / "images"
    src.mkdir()
    image = synthetic_nuclei((300, 420), n=40, seed=3)
    tifffile.imwrite(src / "big.tif", image)
    tifffile.imwrite(src / "small.tif", synthetic_nuclei((128, 160), n=12, seed=1))  # under tile_size: one task
    params = {"points_per_side": 12, "tile_size": 256, "tile_overlap": 64}
    assert tile_count(image.shape, params) == 4 and tile_count((128, 160), params) == 1
    seen = []
    report = segment_batch(src, tmp_path / "out", model=MODEL, workers=0, params=params,
                           progress=lambda d, t: seen.append((d, t)))
    assert report.ok and seen[-1] == (5, 5)
    expected = AutomaticMaskGenerator(get_model(MODEL), **automatic_params(MODEL), **params).generate_labels(image)
    assert expected.max() > 10
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big_labels.tif"), expected)
    assert report.records[0]["objects"] == expected.max()


def test_a_model_that_segments_in_tiles_gets_one_task_per_tile(tmp_path) -> None:
    """lite_medsam_nano_nuclei's registry tiles (256 px) apply without ``tile_size``: 4 tasks for a 300 x 420
    image, the labels of the one-process generator with its settings (registry.automatic_settings)."""
    from napari_sam.weights.registry import automatic_settings

    name = "lite_medsam_nano_nuclei"
    src = tmp_path / "images"
    src.mkdir()
    image = synthetic_nuclei((300, 420), n=30, seed=4)
    tifffile.imwrite(src / "big.tif", image)
    seen = []
    report = segment_batch(src, tmp_path / "out", model=name, workers=0, params={"points_per_side": 4},
                           progress=lambda d, t: seen.append((d, t)))
    assert report.ok and seen[-1] == (4, 4)
    settings = automatic_settings(name, {"points_per_side": 4})
    assert settings["tile_size"] == 256
    expected = AutomaticMaskGenerator(get_model(name), **settings).generate_labels(image)
    assert expected.max() > 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big_labels.tif"), expected)
