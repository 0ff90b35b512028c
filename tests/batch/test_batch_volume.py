"""``--mode volume`` from prompts on chosen slices (workers=0): the labels of ``segment_volume`` called with the
same seeds in SAM's (x, y), ids in the prompts file's order; bad prompts fail their volume only."""

from __future__ import annotations

import json

import numpy as np
import tifffile
import zarr
from _synthetic import balls_volume

from napari_sam.batch import segment_batch
from napari_sam.batch.tasks import get_model
from napari_sam.batch.writing import read_summary
from napari_sam.engine.predictor import SamPredictor
from napari_sam.volume.propagate import segment_volume

MODEL = "nano_nuclei"
HEADER = "image,object,slice,type,row,col,row1,col1,label\n"


def _expected(image: np.ndarray, seeds: dict) -> np.ndarray:
    return segment_volume(SamPredictor(get_model(MODEL)), image, seeds=seeds, progress=None).to_labels()


def _written(out, name: str = "vol") -> np.ndarray:
    return zarr.open_group(str(out / f"{name}_labels.zarr"), mode="r")["0"][:]


def test_prompts_on_chosen_slices_give_segment_volume_labels(tmp_path) -> None:
    image, _ = balls_volume()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    prompts = tmp_path / "prompts.csv"  # object "7" first: id 1; (row, col) in the file, (x, y) for the engine
    prompts.write_text(HEADER + "vol.tif,7,4,point,20,22,,,1\nvol,3,7,box,34,32,54,52,\n")
    report = segment_batch(tmp_path / "vol.tif", tmp_path / "out", mode="volume", prompts=prompts, model=MODEL, workers=0)
    assert report.ok, report.describe()
    expected = _expected(image, {1: {4: {"points": [[22, 20]], "labels": [1]}}, 2: {7: {"box": [32, 34, 52, 54]}}})
    assert set(np.unique(expected)) == {0, 1, 2} and (expected[4] == 1).any() and (expected[7] == 2).any()
    np.testing.assert_array_equal(_written(tmp_path / "out"), expected)
    assert report.records[0]["objects"] == 2


def test_two_keyframes_of_one_object_csv_and_json(tmp_path) -> None:
    image, _ = balls_volume()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text(HEADER + "vol.tif,a,2,point,20,22,,,1\nvol.tif,b,7,box,34,32,54,52,\n"
                        "vol.tif,a,6,point,21,22,,,1\nvol.tif,a,6,point,44,42,,,0\n")
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps({"vol.tif": [
        {"object": "a", "slice": 2, "points": [[20, 22]]},
        {"object": "b", "slice": 7, "box": [34, 32, 54, 52]},
        {"object": "a", "slice": 6, "points": [[21, 22], [44, 42]], "labels": [1, 0]},
    ]}))
    seeds = {1: {2: {"points": [[22, 20]]}, 6: {"points": [[22, 21], [42, 44]], "labels": [1, 0]}},
             2: {7: {"box": [32, 34, 52, 54]}}}
    expected = _expected(image, seeds)
    one_keyframe = _expected(image, {1: {2: seeds[1][2]}, 2: seeds[2]})
    assert not np.array_equal(expected, one_keyframe)  # the second keyframe changes the result
    for file in (csv_file, json_file):
        out = tmp_path / file.suffix[1:]
        report = segment_batch(tmp_path / "vol.tif", out, mode="volume", prompts=file, model=MODEL, workers=0)
        assert report.ok, report.describe()
        np.testing.assert_array_equal(_written(out), expected)


def test_bad_prompts_fail_their_volume_and_the_rest_finish(tmp_path) -> None:
    src = tmp_path / "vols"
    src.mkdir()
    image, _ = balls_volume()
    for name in ("good", "far", "off", "none"):
        tifffile.imwrite(src / f"{name}.tif", image)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(HEADER + "good.tif,1,4,point,20,22,,,1\nfar.tif,1,12,point,20,22,,,1\n"
                       "off.tif,1,4,point,20,22,,,1\noff.tif,2,5,box,10,10,30,70,\n")
    report = segment_batch(src, tmp_path / "out", mode="volume", prompts=prompts, model=MODEL, workers=0)
    rows = {k.rsplit("/", 1)[-1]: r for k, r in read_summary(tmp_path / "out" / "summary.csv").items()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "far.tif": "failed", "good.tif": "done", "none.tif": "failed", "off.tif": "failed"}
    assert "slice 12 is out of range, the volume has slices 0..11" in rows["far.tif"]["message"]
    assert "object '2' on slice 5: (row, col) (30, 70) lies outside the 64 x 64 slice" in rows["off.tif"]["message"]
    assert "no seeds or prompts for none.tif" in rows["none.tif"]["message"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_labels.zarr", "summary.csv"]
    np.testing.assert_array_equal(_written(tmp_path / "out", "good"), _expected(image, {1: {4: {"points": [[22, 20]]}}}))
    assert not report.ok and "far.tif" in report.describe()


def test_seeds_and_prompts_for_one_volume_are_refused(tmp_path) -> None:
    image, labels = balls_volume()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    seeds = np.zeros_like(labels)
    seeds[4] = labels[4]
    tifffile.imwrite(tmp_path / "vol_seeds.tif", seeds)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(HEADER + "vol.tif,1,4,point,20,22,,,1\n")
    report = segment_batch(tmp_path / "vol.tif", tmp_path / "out", mode="volume", seeds=tmp_path, prompts=prompts,
                           model=MODEL, workers=0)
    (rec,) = report.records
    assert rec["status"] == "failed" and rec["message"].startswith("SamUserError: vol.tif has both seeds")
    assert str(tmp_path / "vol_seeds.tif") in rec["message"] and str(prompts) in rec["message"]
    assert not (tmp_path / "out" / "vol_labels.zarr").exists()


def test_the_models_own_stop_rules_apply_unless_given(tmp_path, monkeypatch) -> None:
    """A model with stop rules in the registry (``ModelInfo.volume``) gets them, as in the widget."""
    import dataclasses

    from napari_sam.weights import registry

    monkeypatch.setitem(registry.REGISTRY, MODEL, dataclasses.replace(registry.REGISTRY[MODEL],
                                                                      volume=(("max_distance", 1),)))
    image, _ = balls_volume()
    tifffile.imwrite(tmp_path / "vol.tif", image)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(HEADER + "vol.tif,7,4,point,20,22,,,1\n")
    report = segment_batch(tmp_path / "vol.tif", tmp_path / "out", mode="volume", prompts=prompts, model=MODEL, workers=0)
    assert report.ok, report.describe()
    seeds = {1: {4: {"points": [[22, 20]], "labels": [1]}}}
    short = segment_volume(SamPredictor(get_model(MODEL)), image, seeds=seeds, progress=None, max_distance=1)
    np.testing.assert_array_equal(_written(tmp_path / "out"), short.to_labels())
    assert sorted(np.nonzero(short.to_labels().any(axis=(1, 2)))[0]) == [3, 4, 5]
