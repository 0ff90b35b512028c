"""GUI fixtures: a docked SamWidget on a tiny random-weight model, and helpers to wait and compare."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.predictor import SamPredictor


@pytest.fixture(autouse=True)
def _empty_model_cache(tmp_path, monkeypatch):
    """No registry weights are found (so nothing loads or downloads behind the test's back)."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "model-cache"))


@pytest.fixture
def notes(monkeypatch):
    """Collect napari error/warning notifications shown by napari_sam (list of (kind, text))."""
    seen: list[tuple[str, str]] = []
    import napari_sam._qt._encoder as enc
    import napari_sam._qt._jobs as jb
    import napari_sam._qt._model_box as mb
    import napari_sam._qt.widget as w
    import napari_sam.viewer.label_writer as lw
    import napari_sam.viewer.preview as pv
    import napari_sam.viewer.prompts as pr
    import napari_sam.viewer.segment_anything as v

    for mod in (v, pv, pr, lw, enc, jb, mb, w):
        for kind in ("show_error", "show_warning", "show_info"):
            if hasattr(mod, kind):
                monkeypatch.setattr(mod, kind, lambda msg, k=kind: seen.append((k, str(msg))))
    return seen


@pytest.fixture
def sam_widget(make_napari_viewer, tiny_sam, qtbot):
    """(viewer, widget) with the widget docked and the tiny model set on CPU."""
    from napari_sam._qt.widget import SamWidget

    viewer = make_napari_viewer()
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    widget.sam.set_model(tiny_sam, device="cpu")
    yield viewer, widget
    qtbot.waitUntil(lambda: not widget.encoder.busy and widget.model_box.worker is None, timeout=30000)


def wait_encoded(qtbot, widget, index=None) -> None:
    """Block (processing Qt events) until the slice's embedding is cached and no encode runs."""
    qtbot.waitUntil(lambda: widget.sam.has_embedding(index) and not widget.encoder.busy, timeout=30000)


def direct(model, image, points_xy=None, labels=None, box_xy=None, multimask=True, contrast_limits=None):
    """What SamPredictor.predict gives for hand-converted SAM prompts: (best mask, masks, scores)."""
    p = SamPredictor(model, device="cpu")
    p.set_image(image, contrast_limits=contrast_limits)
    pts = None if points_xy is None else np.asarray(points_xy, dtype=np.float32)
    lab = None if pts is None else np.asarray(labels if labels is not None else [1] * len(pts), dtype=np.float32)
    box = None if box_xy is None else np.asarray(box_xy, dtype=np.float32)
    masks, scores, _ = p.predict(pts, lab, box, multimask_output=multimask)
    return masks[int(np.argmax(scores))], masks, scores


def refined(model, image, points_xy, labels, candidate=None, tiled=False):
    """The widget's second click, by hand: the first point's multimask candidates, then all points
    with the shown candidate's (``candidate``, default the best-scored) low-res logits as
    ``mask_input`` and one mask out. Returns (first masks, first scores, refined mask).
    ``tiled``: through ``TiledPredictor`` (the widget's "tiles at full resolution")."""
    from napari_sam.engine.tiling import TiledPredictor

    p = TiledPredictor(model, device="cpu") if tiled else SamPredictor(model, device="cpu")
    p.set_image(image)
    pts, lab = np.asarray(points_xy, dtype=np.float32), np.asarray(labels, dtype=np.float32)
    masks, scores, low = p.predict(pts[:1], lab[:1], multimask_output=True)
    c = int(np.argmax(scores)) if candidate is None else candidate
    m2, _, _ = p.predict(pts, lab, mask_input=low[c][None], multimask_output=False)
    return masks, scores, m2[0]


def image2d(shape=(120, 160), seed=0, dtype=np.uint8) -> np.ndarray:
    """Blobs on a dark background (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, dtype=float)
    for _ in range(6):
        cy, cx, r = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10), rng.uniform(6, 14)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = img / img.max()
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return (img * (np.iinfo(dtype).max if np.dtype(dtype) != np.uint8 else 255)).astype(dtype)
