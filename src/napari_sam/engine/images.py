"""Turn what a napari image layer holds (one 2D slice) into SAM's input: (H, W, 3) uint8 RGB.

Rules (see ``docs/engine.md``):

- Shapes: (H, W) gray, (H, W, 1) gray, (H, W, 3) RGB, (H, W, 4) RGBA (alpha is dropped).
  Anything else, and images with 0 pixels, raise ``ValueError`` naming the shape.
- uint8: passed unchanged (RGB) or stacked to 3 channels (gray); ``contrast_limits`` are ignored.
- bool: False -> 0, True -> 255.
- Other integers and floats: mapped linearly from ``contrast_limits`` (napari's layer limits) when
  given, else from robust percentiles (0.1, 99.9) of the finite values (min/max if those
  coincide), to 0..255, clipped and rounded. No overflow: the arithmetic is done in float.
  Float RGB images within [0, 1] use (0, 1) as limits, as napari does.
- NaN maps to the low value (0); +inf/-inf clip to 255/0. Images without finite values, and
  constant images, give all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (0.1, 99.9)
"""Percentiles used as contrast limits when none are given."""

_MAX_STAT_PIXELS = 1 << 21  # percentiles are computed on a regular subsample beyond ~2 M values


def _check_shape(arr: np.ndarray, rgb: bool | None) -> bool:
    """Validate the shape; return whether the image is RGB(A)."""
    expected = "(H, W) gray or (H, W, 3|4) RGB(A)"
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        is_rgb = True
    elif arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        is_rgb = False
    else:
        raise ValueError(f"expected a 2D image {expected}, got an array of shape {arr.shape}")
    if rgb is not None and bool(rgb) != is_rgb:
        raise ValueError(
            f"rgb={rgb} does not fit an image of shape {arr.shape}: expected "
            f"{'(H, W, 3|4)' if rgb else '(H, W)'}"
        )
    if arr.size == 0:
        raise ValueError(f"the image is empty (0 pixels): shape {arr.shape}, expected {expected}")
    return is_rgb


def _robust_limits(values: np.ndarray) -> tuple[float, float] | None:
    """(low, high) from the finite values of ``values``; None when there are none."""
    flat = values.reshape(-1)
    if flat.size > _MAX_STAT_PIXELS:
        flat = flat[:: int(np.ceil(flat.size / _MAX_STAT_PIXELS))]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None
    lo, hi = np.percentile(flat, PERCENTILES)
    if not hi > lo:
        lo, hi = flat.min(), flat.max()
    return float(lo), float(hi)


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] -> [0, 255] uint8 (clipped, rounded); NaN -> 0; hi == lo thresholds at lo."""
    wide = arr.dtype.itemsize > 4 or (arr.dtype.kind in "iu" and arr.dtype.itemsize > 2)
    work = np.float64 if wide else np.float32  # float32 is exact for <= 16-bit integers
    x = arr.astype(work, copy=False)
    if hi == lo:
        return np.where(x > lo, 255, 0).astype(np.uint8)
    out = (x - work(lo)) * work(255.0 / (hi - lo))
    np.clip(out, 0, 255, out=out)  # NaN stays NaN here
    np.nan_to_num(out, copy=False, nan=0.0)
    return np.rint(out).astype(np.uint8)


def to_sam_image(
    image: np.ndarray,
    contrast_limits: Sequence[float] | None = None,
    rgb: bool | None = None,
) -> np.ndarray:
    """Convert one napari image slice to SAM input.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array-like (numpy, dask, zarr ...);
            dtype uint8, uint16, any int, float or bool.
        contrast_limits: (low, high) in data units, e.g. ``layer.contrast_limits``; values at or
            below ``low`` map to 0, at or above ``high`` to 255. Ignored for uint8 and bool.
        rgb: napari's ``layer.rgb``; None infers it from the shape. A mismatch raises ``ValueError``.

    Returns:
        (H, W, 3) uint8 RGB array (C-contiguous). uint8 RGB input is returned as is (alpha dropped).

    Raises:
        ValueError: wrong number of dimensions, 0 pixels, unsupported dtype, bad contrast limits.
    """
    arr = np.asarray(image)
    is_rgb = _check_shape(arr, rgb)
    if is_rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif not is_rgb and arr.ndim == 3:
        arr = arr[..., 0]

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype.kind in "iuf":
        if contrast_limits is not None:
            lims = np.asarray(contrast_limits, dtype=float)
            if lims.shape != (2,) or not np.all(np.isfinite(lims)) or lims[1] < lims[0]:
                raise ValueError(
                    f"contrast_limits must be two finite numbers (low, high) with low <= high, "
                    f"got {contrast_limits!r}"
                )
            lo, hi = float(lims[0]), float(lims[1])
        elif is_rgb and arr.dtype.kind == "f" and _within_unit(arr):
            lo, hi = 0.0, 1.0
        else:
            limits = _robust_limits(arr)
            if limits is None:  # no finite value at all
                return np.zeros(arr.shape[:2] + (3,), dtype=np.uint8)
            lo, hi = limits
            if hi == lo:  # constant image
                return np.zeros(arr.shape[:2] + (3,), dtype=np.uint8)
        out = _rescale(arr, lo, hi)
    else:
        raise ValueError(
            f"unsupported image dtype {arr.dtype} (shape {arr.shape}): expected bool, int or float"
        )

    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def _within_unit(arr: np.ndarray) -> bool:
    finite = arr[np.isfinite(arr)]
    return finite.size > 0 and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0

