"""2D check of a model on GoNuclear slices, and of its sensitivity to the object scale.

One positive click at the centre of each of the first 10 nuclei of slices 30, 50 and 70 of
``../shared/data/gonuclear3d/`` (100x100 px slices: the model's 512 px frame upscales them 5x); the
score is the mean Dice of the best-scored of the 3 masks, on the original 100x100 region. ``--pad N``
presents each slice in a larger field of view (N px added right and bottom, ``--pad-mode reflect``
or ``median``), so the same nuclei are upscaled less. ``--zoom Z`` embeds each slice scaled by Z and
zero-padded (``SamPredictor(zoom=Z)``; ``fit``: enlarged to fill the input, the old default; ``model``:
the model's own default) instead of padding the image.

    python bench/eval_gonuclear_slices.py nano_nuclei nano_nuclei_v1
    python bench/eval_gonuclear_slices.py nano_nuclei nano_nuclei_v1 --pad 300 --pad 150
    python bench/eval_gonuclear_slices.py nano_nuclei --zoom fit --zoom 1 --zoom 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from napari_sam.engine.images import to_sam_image
from napari_sam.engine.predictor import SamPredictor
from napari_sam.weights.loading import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gonuclear3d"


def slice_dice(predictor: SamPredictor, raw: np.ndarray, gt: np.ndarray, pad: int, mode: str,
               slices=(30, 50, 70), per_slice: int = 10) -> list[float]:
    """Dice per clicked nucleus; ``raw``/``gt`` (Z, Y, X); the click is SAM (x, y) at the centre pixel."""
    out = []
    for z in slices:
        img = raw[z]
        if pad:
            extra = ((0, pad), (0, pad))
            img = np.pad(img, extra, mode="reflect") if mode == "reflect" else np.pad(
                img, extra, constant_values=np.median(raw))
        predictor.set_image(to_sam_image(img))
        h, w = gt[z].shape
        for oid in [i for i in np.unique(gt[z]) if i][:per_slice]:
            truth = gt[z] == oid
            ys, xs = np.nonzero(truth)
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            masks, scores, _ = predictor.predict(np.array([[xs[k], ys[k]]]), np.array([1]))
            m = masks[int(np.argmax(scores))][:h, :w]
            out.append(2 * (m & truth).sum() / (m.sum() + truth.sum()))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="registry names or checkpoint paths")
    ap.add_argument("--pad", type=int, action="append", help="field-of-view padding in px (repeatable; default 0)")
    ap.add_argument("--pad-mode", default="reflect", choices=["reflect", "median"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--device", default=None)
    ap.add_argument("--zoom", action="append", help="'fit', 'model' or a scale (repeatable; default: model)")
    a = ap.parse_args(argv)
    raw = tifffile.imread(a.data / "1135_mini_raw.tif")
    gt = tifffile.imread(a.data / "1135_mini_labels.tif").astype(np.int32)
    for name in a.models:
        model = load_model(name, device=a.device)
        for zoom in a.zoom or ["model"]:
            z = None if zoom == "fit" else zoom if zoom == "model" else float(zoom)
            predictor = SamPredictor(model, zoom=z)
            for pad in a.pad or [0]:
                d = slice_dice(predictor, raw, gt, pad, a.pad_mode)
                side = 100 + pad
                print(f"{name:<20} zoom {predictor.zoom or 'fit'!s:<5} field {side}x{side} "
                      f"({a.pad_mode if pad else 'none'}): 1-click Dice {np.mean(d):.3f} over {len(d)} nuclei", flush=True)


if __name__ == "__main__":
    main()
