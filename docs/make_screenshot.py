"""Screenshot of napari with the SAM widget docked and one committed object -> docs/images/widget.png.

Run: ``xvfb-run -a python docs/make_screenshot.py``. Uses the default model when its weights are
on disk, else a random-weight ``nano`` model (the mask is then arbitrary; the caption says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images" / "widget.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._qt.widget import SamWidget
    from napari_sam.viewer.sample_data import nuclei_sample
    from napari_sam.weights.download import is_cached
    from napari_sam.weights.registry import DEFAULT_MODEL

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    widget = SamWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget, name="Segment Anything", area="right")
    if is_cached(DEFAULT_MODEL):
        widget.sam.set_model(DEFAULT_MODEL, device="cpu")
    else:
        import torch

        from napari_sam.models.sam import build_model

        torch.manual_seed(0)
        model = build_model("nano")
        model.model_name = "nano (random weights)"
        widget.sam.set_model(model, device="cpu")
    [(data, kwargs, _)] = nuclei_sample()
    viewer.add_image(data, **kwargs)
    app = QApplication.instance()
    sam = widget.sam
    while not (sam.has_embedding() and not widget.encoder.busy):
        app.processEvents()
    # click the centres of a few bright nuclei (local maxima of the smoothed image), one object each
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian

    smooth = gaussian(np.asarray(data, dtype=np.float32), sigma=4)
    peaks = peak_local_max(smooth, min_distance=40, num_peaks=7, exclude_border=30)
    for r, c in peaks[:6]:
        sam.add_point([r, c])
        widget.commit()
    sam.add_point(list(peaks[6]))  # a live prompt + preview for the picture
    for _ in range(20):
        app.processEvents()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(OUT))
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
