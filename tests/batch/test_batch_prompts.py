"""Prompt files with slices: CSV ``slice`` column, JSON ``"slice"``/``"object"`` keys, (row, col) -> (x, y) seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam.batch import segment_batch
from napari_sam.batch.prompts import PromptedObject, image_prompts, read_prompts, volume_seeds
from napari_sam.errors import SamUserError
from napari_sam.viewer.sample_data import synthetic_nuclei

HEADER = "image,object,slice,type,row,col,row1,col1,label\n"


def test_csv_slice_column_and_json_keys_give_the_same_objects(tmp_path) -> None:
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(HEADER + "v.tif,a,2,point,5,6,,,1\nv.tif,b,3,box,1,2,9,8,\nv.tif,a,2,point,7,7,,,0\n"
                        "v.tif,a,8,point,4,4,,,\n")
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps({"v.tif": [
        {"object": "a", "slice": 2, "points": [[5, 6], [7, 7]], "labels": [1, 0]},
        {"object": "b", "slice": 3, "box": [1, 2, 9, 8]},
        {"object": "a", "slice": 8, "points": [[4, 4]]},
    ]}))
    expected = [PromptedObject("a", {2: ([[5.0, 6.0], [7.0, 7.0]], [1, 0], None), 8: ([[4.0, 4.0]], [1], None)}),
                PromptedObject("b", {3: (None, None, [1.0, 2.0, 9.0, 8.0])})]
    assert read_prompts(csv_file) == {"v.tif": expected}
    assert read_prompts(json_file) == {"v.tif": expected}
    unnamed = tmp_path / "u.json"  # without "object" each entry is an object of its own
    unnamed.write_text(json.dumps({"v.tif": [{"slice": 1, "box": [1, 2, 9, 8]}, {"slice": 1, "box": [1, 2, 9, 8]}]}))
    assert [o.name for o in read_prompts(unnamed)["v.tif"]] == ["#0", "#1"]


def test_volume_seeds_are_sam_xy_with_ids_in_file_order() -> None:
    objects = [PromptedObject("z", {4: ([[10, 20], [30, 40]], [1, 0], None)}),
               PromptedObject("a", {0: (None, None, [40, 30, 5, 6]), 9: ([[-0.5, 63.5]], None, None)})]
    seeds = volume_seeds(objects, (10, 64, 64), "v.tif")
    assert sorted(seeds) == [1, 2] and sorted(seeds[2]) == [0, 9]
    np.testing.assert_array_equal(seeds[1][4].points, [[20, 10], [40, 30]])
    np.testing.assert_array_equal(seeds[1][4].labels, [1, 0])
    np.testing.assert_array_equal(seeds[2][0].box, [6, 5, 30, 40])  # corners in any order -> x0 <= x1
    np.testing.assert_array_equal(seeds[2][9].labels, [1])


@pytest.mark.parametrize(("frames", "message"), [
    ({None: ([[1, 1]], None, None)}, "has a prompt without a slice"),
    ({10: ([[1, 1]], None, None)}, "slice 10 is out of range, the volume has slices 0..9"),
    ({-1: ([[1, 1]], None, None)}, "slice -1 is out of range"),
    ({3: ([[64, 1]], None, None)}, "(row, col) (64, 1) lies outside the 64 x 48 slice"),
    ({3: (None, None, [0, 0, 10, 48])}, "(row, col) (10, 48) lies outside the 64 x 48 slice"),
    ({3: ([[1, 2, 3]], None, None)}, "points are [[row, col], ...]"),
])
def test_volume_seeds_refuse_bad_prompts(frames, message) -> None:
    with pytest.raises(SamUserError, match="v.tif: object 'q'") as exc:
        volume_seeds([PromptedObject("q", frames)], (10, 64, 48), "v.tif")
    assert message in str(exc.value)


def test_bad_slices_in_the_file(tmp_path) -> None:
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(HEADER + "v.tif,a,2,point,5,6,,,1\nv.tif,a,2.5,point,5,6,,,1\n")
    with pytest.raises(SamUserError, match=r"p.csv, line 3: slice must be a whole number, not '2.5'"):
        read_prompts(csv_file)
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps({"v.tif": [{"object": 1, "slice": 2, "points": [[1, 1]]},
                                               {"object": 1, "slice": 2, "box": [0, 0, 4, 4]}]}))
    with pytest.raises(SamUserError, match="object '1' of 'v.tif' has two entries on slice 2: merge them"):
        read_prompts(json_file)
    json_file.write_text(json.dumps({"v.tif": [{"slice": True, "points": [[1, 1]]}]}))
    with pytest.raises(SamUserError, match="slice must be a whole number, not True"):
        read_prompts(json_file)


def test_a_slice_on_a_2d_image_fails_that_image(tmp_path) -> None:
    assert image_prompts([PromptedObject("1", {None: ([[1, 2]], [1], None)})], "a.tif") == [([[1, 2]], [1], None)]
    tifffile.imwrite(tmp_path / "a.tif", synthetic_nuclei((64, 64), n=4))
    prompts = tmp_path / "p.csv"
    prompts.write_text(HEADER + "a.tif,1,,point,5,6,,,1\na.tif,2,3,point,9,9,,,1\n")
    report = segment_batch(tmp_path / "a.tif", tmp_path / "out", mode="prompts", prompts=prompts, model="nano_nuclei",
                           workers=0)
    (rec,) = report.records
    assert rec["status"] == "failed"
    assert rec["message"] == ("SamUserError: a.tif is a 2D image, but object '2' has prompts on slice 3: slices are for "
                              "volumes (--mode volume)")
