"""TiledPredictor: large images decoded in native-resolution tiles (napari_sam.engine.tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import tiny_sam

from napari_sam.engine.predictor import ImageEmbedding, SamPredictor
from napari_sam.engine.tiling import OUTSIDE_LOGIT, TiledEmbedding, TiledPredictor, tile_origins

H, W = 600, 700  # the tiny model's input is 256 px: 3 x 4 tiles with the default overlap (64 px)


def _model():
    return tiny_sam(img_size=256).eval()  # 16 x 16 grid, 64 x 64 low-res: 4 px per cell


def _image(h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.7) % 255, (yy * 0.9) % 255, ((xx + yy) * 0.5) % 255], -1)
    img[250:330, 280:360] = (240, 30, 30)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiled():
    model = _model()
    tp = TiledPredictor(model, device="cpu")
    img = _image()
    tp.set_image(img)
    return tp, img


def _native(tp: TiledPredictor, img: np.ndarray, k: int) -> tuple[SamPredictor, int, int]:
    """A plain predictor holding tile ``k`` of ``img`` at its own scale, and the tile's (row, col)."""
    r, c = tp.embedding.origins[k]
    p = SamPredictor(tp.model, device="cpu")
    p.set_image_embedding(p.compute_embedding(img[r : r + tp.img_size, c : c + tp.img_size], native=True))
    return p, r, c


@pytest.mark.parametrize("length,tile,overlap,step", [(600, 256, 64, 4), (701, 256, 64, 4), (1388, 512, 128, 2),
                                                      (513, 512, 128, 2), (256, 256, 64, 4), (100, 256, 0, 4)])
def test_tile_origins_cover_with_overlap(length, tile, overlap, step):
    o = tile_origins(length, tile, overlap, step)
    assert o[0] == 0 and all(v % step == 0 for v in o)
    covered = np.zeros(length, bool)
    for v in o:
        covered[v : v + tile] = True
    assert covered.all()
    assert length <= tile or o[-1] + tile - length < step  # the last tile ends less than a cell past the end
    assert all(a + tile - b > overlap - step for a, b in zip(o[:-1], o[1:], strict=True))


def test_small_image_is_exactly_the_plain_predictor():
    model = _model()
    img = _image(200, 240)
    plain, tp = SamPredictor(model, device="cpu"), TiledPredictor(model, device="cpu")
    plain.set_image(img)
    tp.set_image(img)
    assert isinstance(tp.embedding, ImageEmbedding) and not tp.is_tiled
    args = (np.array([[120.0, 90.0]]), np.array([1]))
    for a, b in zip(plain.predict(*args), tp.predict(*args), strict=True):
        np.testing.assert_array_equal(a, b)


def test_prepare_embedding_prepares_an_image_that_fits_a_tile_only(tiled):
    """``TiledPredictor.prepare_embedding``: a plain (one-tile) embedding gets the inner predictor's
    decoder preparation, used by the first click after ``set_image_embedding``; a tiled one is
    returned unchanged."""
    tp, _ = tiled
    assert tp.prepare_embedding(tp.embedding) is tp.embedding  # tiled
    small = TiledPredictor(tp.model, device="cpu")
    emb = small.compute_embedding(_image(200, 240))
    ready = small.prepare_embedding(emb)
    assert isinstance(ready, ImageEmbedding) and ready.prepared is not None
    small.set_image_embedding(ready)
    assert small.predictor._prepared is ready.prepared.value
    first = small.predict(np.array([[120.0, 90.0]]), np.array([1]))
    plain = SamPredictor(tp.model, device="cpu")
    plain.set_image_embedding(emb)
    plain.prepare()
    for a, b in zip(first, plain.predict(np.array([[120.0, 90.0]]), np.array([1])), strict=True):
        np.testing.assert_array_equal(a, b)


def test_embedding_has_tiles_at_native_scale(tiled):
    tp, _ = tiled
    emb = tp.embedding
    assert isinstance(emb, TiledEmbedding) and tp.is_tiled
    assert len(emb.tiles) == len(tile_origins(H, 256, 64, 4)) * len(tile_origins(W, 256, 64, 4)) == 12
    assert all(t.input_size == t.original_size and max(t.original_size) <= 256 for t in emb.tiles)
    assert emb.overview.original_size == (H, W) and emb.original_size == (H, W)
    assert emb.nbytes == sum(t.nbytes for t in emb.tiles) + emb.overview.nbytes
    assert tp.low_res_size == (150, 175)  # 4 px per cell


def test_tiles_encoded_in_batches_equal_one_at_a_time(tiled):
    """``encode_batch_size`` tiles encoded together (8 on a GPU) give the tiles of one at a time;
    progress is reported after each batch."""
    tp, img = tiled
    batched = TiledPredictor(tp.model, device="cpu")
    batched.encode_batch_size = 5
    steps = []
    gen = batched.iter_embedding(img)
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as end:
            emb = end.value
            break
    assert steps == [(1, 13), (6, 13), (11, 13), (13, 13)]
    assert emb.origins == tp.embedding.origins
    for a, b in zip(emb.tiles, tp.embedding.tiles, strict=True):
        assert a.original_size == b.original_size
        torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-4)


def test_iter_embedding_reports_each_encoder_run(tiled):
    """The generator form (progress bars) yields (done, total) after the overview and each tile and
    returns the same embedding; an image that fits one tile is one run."""
    tp, img = tiled
    steps = tp.iter_embedding(img)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as end:
            emb = end.value
            break
    total = tp.encodings(img.shape)
    assert total == 13 and seen == [(i, total) for i in range(1, total + 1)]
    assert isinstance(emb, TiledEmbedding) and emb.origins == tp.embedding.origins
    for a, b in zip(emb.tiles + [emb.overview], tp.embedding.tiles + [tp.embedding.overview], strict=True):
        np.testing.assert_array_equal(a.features.numpy(), b.features.numpy())
    assert tp.encodings((256, 200)) == 1 and list(tp.iter_embedding(_image(256, 200))) == [(1, 1)]


def test_point_is_decoded_in_its_tile_at_native_scale(tiled):
    tp, img = tiled
    xy = np.array([[320.0, 290.0]])
    masks, scores, low = tp.predict(xy, np.array([1]))
    assert masks.shape == (3, H, W) and low.shape == (3, 150, 175)
    k = tp._choose(xy[None], np.array([[1]]), None, 0)
    assert k >= 0
    p, r, c = _native(tp, img, k)
    m, s, lo = p.predict(xy - [c, r], np.array([1]))
    th, tw = m.shape[-2:]
    np.testing.assert_array_equal(masks[:, r : r + th, c : c + tw], m)
    outside = np.ones((H, W), bool)
    outside[r : r + th, c : c + tw] = False
    assert not masks[:, outside].any()
    np.testing.assert_array_equal(scores, s)
    np.testing.assert_array_equal(low[:, r // 4 : r // 4 + 64, c // 4 : c // 4 + 64], lo)
    assert (low[:, : r // 4] == OUTSIDE_LOGIT).all()


def test_refinement_takes_the_image_wide_low_res_logits(tiled):
    tp, img = tiled
    xy = np.array([[320.0, 290.0], [300.0, 270.0]])
    _, scores, low = tp.predict(xy[:1], np.array([1]))
    prev = low[[int(scores.argmax())]]
    masks, _, low2 = tp.predict(xy, np.array([1, 0]), mask_input=prev, multimask_output=False)
    assert masks.shape == (1, H, W) and low2.shape == (1, 150, 175)
    k = tp._choose(xy[None], np.array([[1, 0]]), None, 0)
    p, r, c = _native(tp, img, k)
    m, _, _ = p.predict(xy - [c, r], np.array([1, 0]), mask_input=prev[:, r // 4 : r // 4 + 64, c // 4 : c // 4 + 64],
                        multimask_output=False)
    np.testing.assert_array_equal(masks[:, r : r + m.shape[1], c : c + m.shape[2]], m)
    with pytest.raises(ValueError, match="mask_input must have shape"):
        tp.predict(xy, np.array([1, 0]), mask_input=np.zeros((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="together"):
        tp.predict(xy)
    with pytest.raises(ValueError, match=r"point_coords must have shape \(B, N, 2\)"):
        tp.predict_batch(xy, np.array([1, 0]))
    with pytest.raises(ValueError, match="same batch size"):
        tp.predict_batch(xy[None], np.ones((1, 2)), boxes=np.zeros((2, 4)))


def test_box_larger_than_a_tile_uses_the_whole_image(tiled):
    tp, img = tiled
    box = np.array([50.0, 40.0, 650.0, 560.0])
    masks, scores, low = tp.predict(box=box, multimask_output=False)
    plain = SamPredictor(tp.model, device="cpu")
    plain.set_image(img)
    m, s, _ = plain.predict(box=box, multimask_output=False)
    # plain.set_image prepared the image for the decoder; the overview's first call is not: rounding
    # apart, so the masks agree except where a logit is within float rounding of the threshold
    logits = plain.predict(box=box, multimask_output=False, return_logits=True)[0]
    sure = np.abs(logits - tp.model.mask_threshold) > 1e-6
    assert sure.mean() > 0.9999
    np.testing.assert_array_equal(masks[sure], m[sure])
    np.testing.assert_allclose(scores, s, rtol=1e-5, atol=1e-6)
    assert low.shape == (1, 150, 175) and np.isfinite(low).all()


def test_batch_of_objects_in_different_tiles_equals_one_by_one(tiled):
    tp, _ = tiled
    coords = np.array([[[40.0, 30.0]], [[650.0, 560.0]], [[320.0, 290.0]]])
    labels = np.ones((3, 1))
    boxes = np.array([[10.0, 10.0, 80.0, 60.0], [600.0, 520.0, 690.0, 590.0], [280.0, 250.0, 360.0, 330.0]])
    assert len({tp._choose(coords, labels, boxes, i) for i in range(3)}) == 3
    masks, scores, low = tp.predict_batch(coords, labels, boxes)
    for i in range(3):
        m, s, lo = tp.predict(coords[i], labels[i], boxes[i], multimask_output=False)
        np.testing.assert_array_equal(masks[i], m)
        np.testing.assert_array_equal(scores[i], s)
        np.testing.assert_array_equal(low[i], lo)
    empty = tp.predict_batch(boxes=np.zeros((0, 4)))
    assert [a.shape for a in empty] == [(0, 1, H, W), (0, 1), (0, 1, 150, 175)]


def _many_boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform([0, 0], [W - 60, H - 60], (n, 2))
    return np.concatenate([xy, xy + rng.uniform(20, 60, (n, 2))], axis=1)


def test_batch_in_chunks_reports_progress_and_cancels(tiled):
    """Many objects over all tiles: decoded at most ``chunk_size`` (of one tile) per decoder call, in
    the order of the tiles, with progress in objects and a cancel between chunks (issue 23)."""
    import threading

    from napari_sam.errors import Cancelled

    tp, _ = tiled
    boxes = _many_boxes(40)
    assert len({tp._choose(None, None, boxes, i) for i in range(40)}) >= 4
    whole = tp.predict_batch(boxes=boxes)  # default chunks
    seen = []
    chunked = tp.predict_batch(boxes=boxes, chunk_size=3, progress=lambda d, t: seen.append((d, t)))
    assert (whole[0] != chunked[0]).mean() < 1e-4  # masks: float rounding apart, the same
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-4, atol=1e-4)
    assert seen[-1] == (40, 40) and [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) >= 40 // 3
    stop, calls = threading.Event(), []

    def progress(done, total):
        calls.append(done)
        if done >= 6:
            stop.set()

    with pytest.raises(Cancelled):
        tp.predict_batch(boxes=boxes, chunk_size=3, progress=progress, cancel=stop)
    assert 6 <= calls[-1] < 40 and all(c < 6 for c in calls[:-1])  # stopped at the chunk after the set


def test_iter_predict_batch_gives_objects_in_order_in_bounded_chunks(tiled, monkeypatch):
    import napari_sam.engine.chunks as chunks
    from napari_sam.errors import TooMuchWorkError

    tp, _ = tiled
    boxes = _many_boxes(20, seed=1)
    masks, scores, low = tp.predict_batch(boxes=boxes)
    per_object = H * W + 4 * 150 * 175  # one bool mask and its low-res logits
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 4 * per_object)  # a large image: 4 objects per chunk
    got = list(tp.iter_predict_batch(boxes=boxes))
    assert [start for start, *_ in got] == list(range(0, 20, 4)) and all(len(m) <= 4 for _, m, _, _ in got)
    assert (np.concatenate([m for _, m, _, _ in got]) != masks).mean() < 1e-4
    np.testing.assert_allclose(np.concatenate([s for _, _, s, _ in got]), scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="boxes must have shape"):  # checked at the call, not at the first chunk
        tp.iter_predict_batch(boxes=np.zeros((3, 3)))
    monkeypatch.setattr(chunks, "MAX_BATCH_OUTPUT_BYTES", 10 * per_object)
    with pytest.raises(TooMuchWorkError, match="20 objects.*iter_predict_batch") as err:
        tp.predict_batch(boxes=boxes)
    assert err.value.count == 20


def test_bad_objects_in_a_tiled_batch_are_refused_before_any_decode(tiled, monkeypatch):
    """Every object of a batch is checked before the first chunk is decoded (a NaN in the last one does
    not cost the others' work), and prompts outside the image are said once, not once per tile."""
    import warnings

    from napari_sam.errors import SamInputWarning, SamUserError

    tp, _ = tiled
    boxes = _many_boxes(12, seed=2)
    calls = []
    monkeypatch.setattr(tp.predictor, "predict_torch", lambda *a, **k: calls.append(1))
    bad = boxes.copy()
    bad[-1, 0] = np.nan
    with pytest.raises(SamUserError, match="boxes must be finite"):
        tp.predict_batch(boxes=bad, chunk_size=2)
    bad = boxes.copy()
    bad[-1] = bad[-1, [2, 3, 0, 1]]  # corners swapped
    with pytest.raises(SamUserError, match="x0 <= x1"):
        tp.predict_batch(boxes=bad, chunk_size=2)
    with pytest.raises(SamUserError, match="point_labels must be"):
        tp.predict_batch(np.ones((2, 1, 2)) * 50, np.array([[1], [5]]))
    assert not calls
    monkeypatch.undo()
    far = np.array([[[5000.0, 5000.0]], [[5100.0, 10.0]], [[40.0, 30.0]]])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tp.predict_batch(far, np.ones((3, 1)))
    outside = [w for w in seen if issubclass(w.category, SamInputWarning)]
    assert len(outside) == 1 and "2 of 3 point(s)" in str(outside[0].message)


def test_bad_use_is_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match="overlap"):
        TiledPredictor(model, overlap=200)
    tp = TiledPredictor(model, device="cpu")
    with pytest.raises(RuntimeError, match="no image is set"):
        tp.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="native=True"):
        tp.predictor.compute_embedding(_image(300, 200), native=True)


def test_nano_model_segments_a_large_image_better_in_tiles(shared_data):
    """The 1272 x 603 fluorescence validation image: shrunk 2.5x to the model's 512 px its nuclei are
    2-6 px across (box IoU ~0.1, docs/training.md); in tiles at their own size they are segmented."""
    from PIL import Image

    from napari_sam.train.evaluate import evaluation_objects
    from napari_sam.train.prompts import mask_box
    from napari_sam.weights.loading import load_model

    root = shared_data / "dsb2018"
    sid = "20b20ab049372d184c705acebe7af026d3580f5fd5a72ed796e3622e1685af2f"
    img = np.array(Image.open(root / "images" / f"{sid}.png"))
    lab = np.array(Image.open(root / "labels" / f"{sid}.png"))
    ids = evaluation_objects(lab, 8, seed=0)
    gts = [lab == i for i in ids]
    boxes = np.stack([mask_box(g) for g in gts])
    plain = SamPredictor(load_model("nano_nuclei", device="cpu"), device="cpu")
    tp = TiledPredictor(plain)
    ious = {}
    for name, p in (("plain", plain), ("tiled", tp)):
        p.set_image(img)
        m, _, _ = p.predict_batch(boxes=boxes, multimask_output=False)
        ious[name] = np.mean([(m[k, 0] & g).sum() / (m[k, 0] | g).sum() for k, g in enumerate(gts)])
    assert ious["tiled"] >= 0.6 and ious["tiled"] > ious["plain"] + 0.3, ious
