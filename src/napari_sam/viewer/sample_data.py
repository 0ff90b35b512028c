"""Sample data: a fluorescence nuclei image (skimage's ``human_mitosis`` when on disk, else synthetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _cached_mitosis() -> np.ndarray | None:
    """skimage's human_mitosis (512x512) if it is already in skimage's data cache; never downloads."""
    try:
        import skimage.data
        from skimage.data import _fetchers

        fetcher = getattr(_fetchers, "_image_fetcher", None)
        if fetcher is None or not (Path(fetcher.path) / "data" / "mitosis.tif").is_file():
            return None
        return np.asarray(skimage.data.human_mitosis())
    except Exception:
        return None


def synthetic_nuclei(shape: tuple[int, int] = (512, 512), n: int = 60, seed: int = 0) -> np.ndarray:
    """(H, W) uint8 image of ``n`` blurred elliptical nuclei with texture and noise (deterministic)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        a, b = rng.uniform(7, 16), rng.uniform(6, 13)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        r2 = u * u + v * v
        img = np.maximum(img, rng.uniform(0.45, 1.0) / (1.0 + np.exp(np.minimum((r2 - 1.0) * 8.0, 50.0))))
    img *= 0.85 + 0.15 * rng.random(shape, dtype=np.float32)
    img += 0.04 * rng.random(shape, dtype=np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def nuclei_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample: [(image (H, W), layer kwargs, "image")]."""
    data = _cached_mitosis()
    if data is not None:
        return [(data, {"name": "nuclei (human mitosis)", "colormap": "gray"}, "image")]
    return [(synthetic_nuclei(), {"name": "nuclei (synthetic)", "colormap": "gray"}, "image")]
