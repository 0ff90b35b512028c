"""Cross-cutting bad input (issue 23), engine side (no napari): API traps and bounded long calls.

The per-module cases stay next to their module's tests (test modules mirror the source):
``tests/engine/test_bad_prompts.py`` (prompts, model argument, devices, 1xN images),
``tests/automatic/test_automatic_bad_input.py`` (automatic-mask parameters),
``tests/volume/test_volume_bad_input.py`` (slice axis, labels' shape), ``tests/viewer/test_viewer_faults.py``
and ``tests/_qt/test_widget_faults.py`` (viewer and widget). This module holds what crosses them: seeds
in the wrong coordinate order, huge prompt batches, huge tiled images, optional dependencies. Each
case asserts the project's error type and the words that tell the user what to do; docs/errors.md
lists them all.
"""

from __future__ import annotations

import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
from _synthetic import make_tiny_sam

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.automatic.utils import coco_encode_rle, mask_to_rle
from napari_sam.engine import chunks
from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.tiling import MAX_TILE_ENCODINGS, TiledPredictor
from napari_sam.errors import Cancelled, MissingDependencyError, SamTypeError, SamUserError, TooMuchWorkError
from napari_sam.volume.propagate import Prompt, segment_volume

VOL = np.zeros((4, 20, 30), np.uint8)


@pytest.fixture(scope="module")
def pred():
    return SamPredictor(make_tiny_sam(), device="cpu")


def _seeds(prompt):
    return {1: {2: prompt}}


# ---------------------------------------------------------------- seeds: (x, y) expected
@pytest.mark.parametrize("points", [[[2, 5, 7]], [[2, 5, 7], [2, 6, 9]], [2, 5, 7]])
def test_seed_points_given_as_zyx_rows_say_so(pred, points):
    """(z, y, x) rows (napari order) used to fail with a raw reshape error, or for two of them to be
    silently read as three (x, y) points."""
    with pytest.raises(SamUserError, match=r"look like napari \(z, y, x\) rows.*\(x, y\) pixels of their slice"
                       r".*points\[:, \[2, 1\]\]"):
        segment_volume(pred, VOL, _seeds({"points": points}))


@pytest.mark.parametrize("points", [[[1, 2, 3, 4]], np.zeros((1, 2, 2)), []])
def test_seed_points_of_other_shapes(pred, points):
    with pytest.raises(SamUserError, match=r"seed points must have shape \(N, 2\), got .*x = column, y = row"):
        segment_volume(pred, VOL, _seeds({"points": points}))


def test_seed_points_must_be_finite_numbers(pred):
    with pytest.raises(SamTypeError, match="seed points must be numbers"):
        segment_volume(pred, VOL, _seeds({"points": [["a", "b"]]}))
    with pytest.raises(SamUserError, match="seed points must be finite.*NaN/inf"):
        segment_volume(pred, VOL, _seeds({"points": [[np.nan, 3]]}))


def test_seed_labels_count_and_values(pred):
    with pytest.raises(SamUserError, match=r"1 point\(s\) but 2 label\(s\): give one label per point"):
        segment_volume(pred, VOL, _seeds({"points": [[3, 4]], "labels": [1, 0]}))
    with pytest.raises(SamUserError, match=r"seed labels must be 1 \(positive\) or 0 \(negative\), got \[2\]"):
        segment_volume(pred, VOL, _seeds({"points": [[3, 4]], "labels": [2]}))


def test_seed_box_shape_and_order(pred):
    with pytest.raises(SamUserError, match=r"4 numbers \(x0, y0, x1, y1\), got shape \(6,\) \(a 3D box\?"):
        segment_volume(pred, VOL, _seeds({"box": [0, 1, 2, 3, 10, 12]}))
    with pytest.raises(SamUserError, match=r"x0 <= x1 and y0 <= y1, got \[10\.0, 2\.0, 3\.0, 8\.0\]: swap"):
        segment_volume(pred, VOL, _seeds({"box": [10, 2, 3, 8]}))


def test_seed_of_the_wrong_kind(pred):
    with pytest.raises(SamTypeError, match=r"a Prompt or a dict with keys points, labels, box, mask; got list"):
        segment_volume(pred, VOL, _seeds([[3, 4]]))
    with pytest.raises(SamUserError, match=r"unknown prompt keys \['point'\]"):
        segment_volume(pred, VOL, _seeds({"point": [[3, 4]]}))
    with pytest.raises(SamUserError, match="needs points, a box or a non-empty mask"):
        segment_volume(pred, VOL, _seeds({"mask": np.zeros((20, 30), bool)}))


def test_right_seeds_still_run(pred):
    p = Prompt.coerce({"points": [5, 6]}, (20, 30))  # one (x, y) point as a flat pair
    assert p.points.tolist() == [[5.0, 6.0]] and p.labels.tolist() == [1]
    res = segment_volume(pred, VOL, _seeds({"points": [[5, 6]], "box": (1, 2, 20, 15)}), min_area=0,
                         iou_threshold=float("-inf"), overlap_threshold=0)
    assert 2 in res.slices


# ---------------------------------------------------------------- predict_batch: thousands of objects
@pytest.fixture(scope="module")
def image_pred():
    p = SamPredictor(make_tiny_sam(), device="cpu")
    p.set_image((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    return p


def _boxes(n, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(4, 20, (n, 2))], axis=1)


def test_predict_batch_of_thousands_decodes_in_bounded_chunks(image_pred, monkeypatch):
    boxes = _boxes(2000)
    sizes, reports = [], []
    decode = image_pred.predict_torch

    def spy(c, lab, b, m, *args):
        sizes.append(len(b))
        return decode(c, lab, b, m, *args)

    monkeypatch.setattr(image_pred, "predict_torch", spy)
    masks, scores, low = image_pred.predict_batch(boxes=boxes, progress=lambda d, t: reports.append((d, t)))
    assert masks.shape == (2000, 1, 48, 64) and scores.shape == (2000, 1) and low.shape == (2000, 1, *image_pred.mask_input_size)
    assert max(sizes) == chunks.DECODE_CHUNK and sum(sizes) == 2000  # never all 2000 at once
    assert reports[-1] == (2000, 2000) and [d for d, _ in reports] == sorted({d for d, _ in reports})
    one = image_pred.predict_batch(boxes=boxes[:40], chunk_size=40)  # chunking does not change results
    np.testing.assert_allclose(low[:40], one[2], atol=1e-4)
    np.testing.assert_allclose(scores[:40], one[1], atol=1e-5)


def test_predict_batch_cancel_and_iter(image_pred):
    boxes = _boxes(100)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2  # stop before the third chunk

    with pytest.raises(Cancelled):
        image_pred.predict_batch(boxes=boxes, cancel=cancel, chunk_size=10)
    assert len(calls) == 3
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        image_pred.predict_batch(boxes=boxes, cancel=stop)
    whole = image_pred.predict_batch(boxes=boxes, chunk_size=30)
    parts = list(image_pred.iter_predict_batch(boxes=boxes, chunk_size=30))
    assert [s for s, *_ in parts] == [0, 30, 60, 90] and [len(m) for _, m, _, _ in parts] == [30, 30, 30, 10]
    np.testing.assert_array_equal(np.concatenate([m for _, m, _, _ in parts]), whole[0])
    with pytest.raises(SamUserError, match=r"chunk_size must be at least 1 \(objects per decoder call\), got 0"):
        image_pred.predict_batch(boxes=boxes, chunk_size=0)


def test_predict_batch_whose_masks_would_not_fit_is_refused_before_work(image_pred, monkeypatch):
    monkeypatch.setattr(chunks, "MAX_BATCH_OUTPUT_BYTES", 1 << 20)
    called = []
    monkeypatch.setattr(image_pred, "predict_torch", lambda *a: called.append(1))
    with pytest.raises(TooMuchWorkError, match=r"given 100 objects: their 300 masks of 48x64 px would take "
                       r"0\.\d GiB \(limit 0\.0 GiB.*iter_predict_batch") as err:
        image_pred.predict_batch(boxes=_boxes(100), multimask_output=True)
    assert err.value.count == 100 and err.value.estimate > 1 << 20 and not called
    assert isinstance(err.value, SamUserError)


# ---------------------------------------------------------------- tiles: thousands of encoder runs
def test_huge_image_with_tiles_is_refused_with_count_and_estimate(monkeypatch):
    tp = TiledPredictor(make_tiny_sam(), device="cpu")  # the default limit
    runs = []
    encode = tp.predictor.encode_batch
    monkeypatch.setattr(tp.predictor, "encode_batch", lambda images, *a, **k: runs.append(len(images)) or encode(
        images, *a, **k))
    big = np.zeros((6000, 6000), np.uint8)
    n = tp.encodings(big.shape)
    assert n > MAX_TILE_ENCODINGS
    with pytest.raises(TooMuchWorkError, match=rf"6000x6000 image needs {n} encoder runs \({n - 1} tiles of 256 px "
                       r"\+ the overview\), about \d+ (s|min|h).*Switch tiles off.*max_encodings=None") as err:
        tp.set_image(big)
    assert err.value.count == n and err.value.estimate > 0 and runs == [1] and not tp.is_image_set  # the overview only


def test_tile_limit_can_be_raised_or_lifted():
    img = (np.random.default_rng(2).random((600, 700)) * 255).astype(np.uint8)
    tp = TiledPredictor(make_tiny_sam(), device="cpu", max_encodings=4)
    n = tp.encodings(img.shape)
    with pytest.raises(TooMuchWorkError, match=f"needs {n} encoder runs"):
        tp.set_image(img)
    tp.max_encodings = None
    tp.set_image(img)
    assert tp.is_tiled and len(tp.embedding.tiles) == n - 1


# ---------------------------------------------------------------- optional dependencies
def test_coco_rle_without_pycocotools_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if not installed (an import then fails)
    with pytest.raises(MissingDependencyError, match=r"coco_rle' needs pycocotools.*pip install 'napari-sam-engine\[coco\]'"
                       r".*output_mode='uncompressed_rle'") as err:
        AutomaticMaskGenerator(make_tiny_sam(), points_per_side=2, output_mode="coco_rle", device="cpu")
    assert isinstance(err.value, ImportError) and isinstance(err.value, SamUserError)
    with pytest.raises(MissingDependencyError, match="pip install"):
        coco_encode_rle({"size": [2, 2], "counts": [4]})


def test_coco_extra_is_declared():
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert any(d.startswith("pycocotools") for d in extras["coco"])
    assert any(d.startswith("pycocotools") for d in extras["all"])


def test_coco_rle_with_pycocotools_round_trips():
    mask_utils = pytest.importorskip("pycocotools.mask")
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    rle = coco_encode_rle(mask_to_rle(m))
    np.testing.assert_array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool), m)


# ---------------------------------------------------------------- batch shapes, seeds' slices, tiles, options
@pytest.mark.parametrize("kwargs, match", [
    ({"point_coords": np.zeros((1, 2, 3)), "point_labels": np.ones((1, 2))}, r"point_coords must have shape \(B, N, 2\)"),
    ({"point_coords": np.zeros((1, 2, 2)), "point_labels": np.ones((1, 3))}, r"point_labels must have shape \(1, 2\)"),
    ({"point_coords": np.zeros((1, 2, 2))}, "point_labels must be given with point_coords"),
    ({"boxes": np.zeros((2, 5))}, r"boxes must have shape \(B, 4\) \(x0, y0, x1, y1\), got \(2, 5\)"),
    ({"point_coords": np.zeros((1, 1, 2)), "point_labels": np.ones((1, 1)), "boxes": np.zeros((2, 4))},
     "boxes has 2 rows but point_coords has batch 1"),
    ({"mask_input": np.zeros((1, 1, 8, 8))}, r"mask_input must have shape \(B, 1, \d+, \d+\) \(low-res logits"),
])
def test_predict_batch_shapes_name_the_expected_one(image_pred, kwargs, match):
    with pytest.raises(SamUserError, match=match):
        image_pred.predict_batch(**kwargs)


@pytest.mark.parametrize("z", [-1, 4, 2.5, "2", True])
def test_seed_slices_must_lie_in_the_volume(pred, z):
    with pytest.raises(SamUserError, match=rf"seeds of object 1 are on slice {z!r}, but the volume has slices 0\.\.3 "
                       r"along axis 0.*negative ones do not count from the end"):
        segment_volume(pred, VOL, {1: {z: {"points": [[3, 4]]}}})


def test_seeds_per_object_must_be_a_dict(pred):
    with pytest.raises(SamTypeError, match=r"object 1 has list .*\{1: \{5: \{'points': \[\[x, y\]\]\}\}\}"):
        segment_volume(pred, VOL, {1: [[3, 4]]})


def test_segment_volume_options(pred):
    with pytest.raises(SamUserError, match=r"prompt must be a '\+'-joined subset of box, point, mask.*'boxes'"):
        segment_volume(pred, VOL, _seeds({"points": [[3, 4]]}), prompt="boxes")
    with pytest.raises(SamUserError, match=r"a volume is required.*segment_volume\(predictor, volume, seeds\)"):
        segment_volume(pred, None, _seeds({"points": [[3, 4]]}))


def test_tiled_predictor_options_and_batch_shapes():
    with pytest.raises(SamUserError, match=r"overlap must be within 0 \.\.\. 128 px \(half a tile\), got 200"):
        TiledPredictor(make_tiny_sam(), device="cpu", overlap=200)
    tp = TiledPredictor(make_tiny_sam(), device="cpu")
    tp.set_image((np.random.default_rng(3).random((300, 400)) * 255).astype(np.uint8))
    assert tp.is_tiled
    with pytest.raises(SamUserError, match=r"boxes must have shape \(B, 4\)"):
        tp.predict_batch(boxes=np.zeros((2, 3)))
    with pytest.raises(SamUserError, match="the same batch size B"):
        tp.predict_batch(np.zeros((1, 1, 2)), np.ones((1, 1)), boxes=np.zeros((2, 4)))


def test_encode_batch_options(pred):
    img = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(SamUserError, match=r"batch_size must be at least 1 \(images per encoder run\), got 0"):
        pred.encode_batch([img], batch_size=0)
    with pytest.raises(SamUserError, match="image_format must be 'RGB' or 'BGR'"):
        pred.encode_batch([img], image_format="HSV")
