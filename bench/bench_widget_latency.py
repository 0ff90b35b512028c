"""Click-to-preview latency of the dock widget vs the bare ``SamPredictor.predict``.

Run: ``xvfb-run -a python bench/bench_widget_latency.py [--arch nano|vit_t|vit_b] [--clicks 50]
[--first-clicks 0]``. A 1024x1024 image, the embedding ready; each "click" is ``points_layer.add``
(what napari's add mode calls on mouse release) and is timed until the preview layer holds the new
mask (the event chain: data event -> prompt read + world->data conversion -> decoder -> preview
layer update). The bare figure is ``predictor.predict`` with the same prompt (multimask, as the
widget). Random weights: the decoder cost does not depend on the weights.

``--first-clicks N``: also a stack of N slices, each shown, encoded by the widget's worker and then
clicked once: the first click on a slice, with the decoder's preparation the worker made after the
encoder (``SamPredictor.prepare_embedding``) on even slices and without it (dropped from the cache
entry, as before session 10) on odd ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_t", help="architecture for a random-weight model (decoder is SAM's)")
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--first-clicks", type=int, default=0, help="slices of a stack to click once each (see the doc)")
    args = ap.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam._qt.widget import SamWidget
    from napari_sam.models.sam import build_model

    torch.manual_seed(0)
    model = build_model(args.arch)
    rng = np.random.default_rng(0)
    image = (rng.random((args.size, args.size)) * 255).astype(np.uint8)
    clicks = rng.uniform(50, args.size - 50, size=(args.clicks, 2))

    viewer = napari.Viewer(show=False)
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget)
    sam = widget.sam
    sam.set_model(model, device="cpu")
    viewer.add_image(image, name="image")
    app = QApplication.instance()
    t0 = time.perf_counter()
    _wait_encoded(app, sam, widget)
    encode_s = time.perf_counter() - t0

    pts = sam.points_layer
    predictor = sam.predictor
    widget_ms, bare_ms = [], []
    for rc in clicks:  # interleaved, so CPU load from elsewhere hits both alike
        sam.clear_prompts()
        t = time.perf_counter()
        pts.add(rc)
        assert sam.objects is not None  # decoded synchronously on the embedding in the data event
        app.processEvents()  # let napari/vispy take the preview update
        widget_ms.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        predictor.predict(np.array([rc[::-1]], np.float32), np.array([1.0], np.float32), multimask_output=True)
        bare_ms.append(1000 * (time.perf_counter() - t))
    w, b = statistics.median(widget_ms), statistics.median(bare_ms)
    print(f"model {args.arch} (random weights), image {args.size}x{args.size}, device {sam.device}, "
          f"torch threads {torch.get_num_threads()}; first encode {encode_s:.2f} s")
    print(f"click -> preview (widget): median {w:.1f} ms over {len(widget_ms)} clicks")
    print(f"SamPredictor.predict     : median {b:.1f} ms")
    print(f"ratio {w / b:.2f}x (target <= 2x)")
    if args.first_clicks > 0:
        _first_clicks(viewer, sam, widget, app, rng, args)
    viewer.close()


def _wait_encoded(app, sam, widget, index: tuple[int, ...] | None = None) -> None:
    """Run the event loop until the slice's embedding is cached and the encode worker is idle
    (woken by the worker's signals, not polling on a timer)."""
    from qtpy.QtCore import QEventLoop

    while not (sam.has_embedding(index) and not widget.encoder.busy):
        app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)


def _first_clicks(viewer, sam, widget, app, rng, args) -> None:
    """The first click on each slice of a stack, with and without the preparation made ahead."""
    stack = (rng.random((args.first_clicks, args.size, args.size)) * 255).astype(np.uint8)
    for layer in list(viewer.layers):
        if layer.name == "image":
            viewer.layers.remove(layer)
    viewer.add_image(stack, name="stack")
    times: dict[bool, list[float]] = {True: [], False: []}
    for z in range(args.first_clicks):
        viewer.dims.set_current_step(0, z)
        _wait_encoded(app, sam, widget, (z,))
        key = sam.embedding_key((z,))
        ahead = z % 2 == 0
        if not ahead:
            sam.cache.put(key, sam.cache.get(key).without_preparation())
        sam.clear_prompts()
        rc = rng.uniform(50, args.size - 50, size=2)
        t = time.perf_counter()
        sam.points_layer.add([z, *rc])
        assert sam.objects is not None
        app.processEvents()
        times[ahead].append(1000 * (time.perf_counter() - t))
    a, p = statistics.median(times[True]), statistics.median(times[False])
    print(f"first click on a slice (click -> preview), {args.first_clicks} slices: prepared by the encode "
          f"worker {a:.1f} ms, not prepared {p:.1f} ms (median of {len(times[True])} / {len(times[False])})")


if __name__ == "__main__":
    main()
