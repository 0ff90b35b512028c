"""Resize to the model's input size ("longest side"), and move prompts with the image.

This is the official ``segment_anything/utils/transforms.py`` without torchvision:
``apply_image`` resizes with ``PIL.Image.resize(..., BILINEAR)``, which is exactly what
torchvision's PIL path does, so the result is bit-identical to the official transform.
Models preprocessed otherwise (LiteMedSAM: OpenCV's ``INTER_AREA``) name their resize in
``model.preprocessing`` (``napari_sam.models.sam.Preprocessing``); :func:`resize_area` is
OpenCV's area resize without OpenCV.

Coordinates are SAM's: points are (x, y), boxes are (x0, y0, x1, y1), in pixels;
image sizes are (H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import sparse

from napari_sam.engine.images import to_sam_image


def _area_weights(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` float64 weights of OpenCV's ``INTER_AREA`` along one axis, when shrinking:
    each output pixel is the mean of the input area it covers (fractional pixels at its edges),
    as ``computeResizeAreaTab`` in OpenCV's ``resize.cpp``."""
    scale = src / dst
    w = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        s2 = min(int(np.floor(f2)), src - 1)
        s1 = min(int(np.ceil(f1)), s2)
        cell = min(scale, src - f1)
        if s1 - f1 > 1e-3:
            w[d, s1 - 1] = (s1 - f1) / cell
        w[d, s1:s2] = 1.0 / cell
        if f2 - s2 > 1e-3:
            w[d, s2] = min(f2 - s2, 1.0, cell) / cell
    return w


def _area_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enlarging with ``INTER_AREA`` is OpenCV's fixed-point linear interpolation with its own
    coefficients: ``(dst, 2)`` source indices and the two 11-bit weights of each output pixel."""
    scale, inv = src / dst, dst / src
    idx = np.zeros((dst, 2), dtype=np.int64)
    w0 = np.zeros(dst, dtype=np.int64)
    w1 = np.zeros(dst, dtype=np.int64)
    for d in range(dst):
        s = int(np.floor(d * scale))
        f = np.float32((d + 1) - (s + 1) * inv)
        f = np.float32(0.0) if f <= 0 else f - np.floor(f)
        if s >= src - 1:
            s, f = src - 1, np.float32(0.0)
        idx[d] = (s, min(s + 1, src - 1))
        w0[d] = int(np.rint((np.float32(1.0) - f) * 2048))
        w1[d] = int(np.rint(f * 2048))
    return idx, w0, w1


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)`` of a uint8 ``(H, W[, C])`` image,
    without OpenCV: ``size`` is ``(h, w)``. Shrinking averages pixel areas (separable weights),
    enlarging is OpenCV's fixed-point variant of linear interpolation. Equal to OpenCV 4's
    output except for rare off-by-one roundings (tests/engine/test_transforms.py measures it)."""
    img = np.asarray(image)
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return np.array(img, copy=True)
    x = img if img.ndim == 3 else img[..., None]
    H, W, C = x.shape
    if h <= H and w <= W:
        wy, wx = sparse.csr_matrix(_area_weights(H, h)), sparse.csr_matrix(_area_weights(W, w))
        cols = (wx @ x.transpose(1, 0, 2).reshape(W, H * C).astype(np.float64)).reshape(w, H, C)  # (w, H, C)
        out = (wy @ cols.transpose(1, 0, 2).reshape(H, w * C)).reshape(h, w, C)
        # OpenCV rounds half to even, except in its vectorised exact 2x2 path (half up)
        out = np.floor(out + 0.5) if (H, W) == (2 * h, 2 * w) else np.rint(out)
    elif h >= H and w >= W:
        (iy, y0, y1), (ix, x0, x1) = _area_taps(H, h), _area_taps(W, w)
        xi = x.astype(np.int64)
        rows = xi[:, ix[:, 0]] * x0[None, :, None] + xi[:, ix[:, 1]] * x1[None, :, None]  # (H, w, C), 11 bits
        a, b = rows[iy[:, 0]] >> 4, rows[iy[:, 1]] >> 4
        out = (((a * y0[:, None, None]) >> 16) + ((b * y1[:, None, None]) >> 16) + 2) >> 2
    else:
        raise ValueError(f"resize_area shrinks or enlarges both sides, got {img.shape[:2]} -> {(h, w)}")
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out if img.ndim == 3 else out[..., 0]


class ResizeLongestSide:
    """Resize images so that the longest side is ``target_length``; transform coords and boxes to match.

    Numpy and torch variants of each method are provided. Sizes are (H, W); coords are (x, y).
    ``interpolation``: ``"bilinear"`` (PIL, SAM's) or ``"area"`` (OpenCV's ``INTER_AREA``, LiteMedSAM's).
    """

    def __init__(self, target_length: int, interpolation: str = "bilinear") -> None:
        if interpolation not in ("bilinear", "area"):
            raise ValueError(f"interpolation must be 'bilinear' or 'area', got {interpolation!r}")
        self.target_length = int(target_length)
        self.interpolation = interpolation

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize a uint8 image (H, W) or (H, W, C) to (newh, neww[, C]) uint8 (PIL bilinear, or
        :func:`resize_area`)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(
                f"apply_image expects a non-empty uint8 array (H, W) or (H, W, C), "
                f"got shape {image.shape} dtype {image.dtype}"
            )
        newh, neww = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        if (newh, neww) == image.shape[:2]:
            # PIL (and OpenCV) return an exact copy in this case as well
            return np.array(image, copy=True)
        if self.interpolation == "area":
            return resize_area(image, (newh, neww))
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.array(pil.resize((neww, newh), Image.BILINEAR))

    def _scale(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        old_h, old_w = int(original_size[0]), int(original_size[1])
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) (x, y) coords in the original (H, W) image -> float64 coords in the resized image."""
        coords = np.array(coords, dtype=float, copy=True)
        if coords.ndim == 0 or coords.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2) (x, y), got {coords.shape}")
        sx, sy = self._scale(original_size)
        coords[..., 0] = coords[..., 0] * sx
        coords[..., 1] = coords[..., 1] * sy
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) (x0, y0, x1, y1) boxes -> (B, 4) float64 boxes in the resized image."""
        boxes = np.asarray(boxes)
        if boxes.ndim == 0 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (..., 4) (x0, y0, x1, y1), got {boxes.shape}")
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, newh, neww), antialiased bilinear.

        May not exactly match :meth:`apply_image`, which is what the model expects. (The official
        version reads the size from ``shape[0], shape[1]``, i.e. B and C; this one uses H and W.)
        """
        target = self.get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, target, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """(..., 2) (x, y) tensor -> float32 tensor in resized-image pixels (a new tensor)."""
        if coords.ndim == 0 or coords.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2) (x, y), got {tuple(coords.shape)}")
        sx, sy = self._scale(original_size)
        coords = coords.detach().clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * sx
        coords[..., 1] = coords[..., 1] * sy
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """(..., 4) (x0, y0, x1, y1) tensor -> (B, 4) float32 tensor in resized-image pixels."""
        if boxes.ndim == 0 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (..., 4) (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(newh, neww) with the longest side ``long_side_length`` (rounded half up, as the official),
        each at least 1 px: a 1 x 5000 image becomes 1 x 1024, not 0 x 1024 (the official's, which no
        resize accepts)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


class SquareResize(ResizeLongestSide):
    """SAM 2's resize: the image stretched to ``target_length x target_length`` (bilinear with
    antialiasing, on the float image: see :func:`model_input`), prompts scaled per axis as
    ``SAM2Transforms.transform_coords`` does (``x / W * S``, ``y / H * S``)."""

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)
        self.interpolation = "square"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("SAM 2 resizes the float image: use model_input")

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        coords = np.array(coords, dtype=float, copy=True)
        if coords.ndim == 0 or coords.shape[-1] != 2:
            raise ValueError(f"coords must have shape (..., 2) (x, y), got {coords.shape}")
        h, w = int(original_size[0]), int(original_size[1])
        coords[..., 0] = coords[..., 0] / w * self.target_length
        coords[..., 1] = coords[..., 1] / h * self.target_length
        return coords

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        h, w = int(original_size[0]), int(original_size[1])
        coords = coords.detach().clone().to(torch.float)
        coords[..., 0] = coords[..., 0] / w * self.target_length
        coords[..., 1] = coords[..., 1] / h * self.target_length
        return coords

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return int(long_side_length), int(long_side_length)


def make_transform(model) -> ResizeLongestSide:
    """The prompt/image transform of ``model``'s input (``model.preprocessing.resize``): SAM's
    longest side (PIL bilinear, or LiteMedSAM's area), or SAM 2's square stretch."""
    resize = getattr(getattr(model, "preprocessing", None), "resize", "bilinear")
    side = int(getattr(model, "img_size", None) or model.image_encoder.img_size)
    return SquareResize(side) if resize == "square" else ResizeLongestSide(side, interpolation=resize)


def model_zoom(model) -> float | None:
    """The zoom at which ``model`` embeds images smaller than its input (``model.preprocessing.zoom``):
    None (enlarged to fill it, SAM's resize) unless the model was measured to prefer a scale."""
    return getattr(getattr(model, "preprocessing", None), "zoom", None)


def zoomed_shape(h: int, w: int, side: int, zoom: float | None) -> tuple[int, int]:
    """(h', w') of an (h, w) image in a model input of ``side`` px: ``zoom=None`` the longest side to
    ``side`` (SAM's resize, enlarging small images); a number: the image scaled by ``zoom`` (1: its own
    pixel scale), or less where that would not fit (then as ``None``), rounded half up, each >= 1 px."""
    if zoom is None:
        return ResizeLongestSide.get_preprocess_shape(h, w, side)
    zoom = float(zoom)
    if not np.isfinite(zoom) or zoom <= 0:
        raise ValueError(f"zoom must be a positive number or None (fill the model's input), got {zoom!r}")
    if max(h, w) * zoom >= side:
        return ResizeLongestSide.get_preprocess_shape(h, w, side)
    return max(1, int(h * zoom + 0.5)), max(1, int(w * zoom + 0.5))


def resize_to(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``(H, W[, C])`` -> ``size`` ``(h, w)``: PIL bilinear (SAM's), or :func:`resize_area`;
    a copy when the size is unchanged."""
    if tuple(image.shape[:2]) == tuple(size):
        return np.array(image, copy=True)
    if interpolation == "area":
        return resize_area(image, size)
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.array(pil.resize((int(size[1]), int(size[0])), Image.BILINEAR))


def model_input(
    image: np.ndarray, model, transform, device, image_format: str = "RGB", contrast_limits=None,
    native: bool = False, zoom: float | None = None,
):
    """``image`` -> a SAM encoder's input ``(1, 3, S, S)`` on ``device`` (``to_sam_image``,
    channels flipped when ``image_format`` differs from the model's, resized with ``transform``
    (``zoom=None``) or by ``zoom`` (:func:`zoomed_shape`: an image smaller than the input is scaled by
    ``zoom``, not enlarged to fill it), not at all with ``native`` (as ``zoom=1``, but an image larger
    than the input is an error), normalised as ``model.preprocessing.normalize`` says: SAM's pixel
    mean and std, or LiteMedSAM's min-max to [0, 1]; zero-padded; SAM 2 (a :class:`SquareResize`):
    scaled to [0, 1], stretched to the square input (or scaled by ``zoom``), then mean/std), with
    its original ``(H, W)`` and its ``(h, w)`` before padding."""
    img = to_sam_image(image, contrast_limits=contrast_limits)
    if image_format != getattr(model, "image_format", "RGB"):
        img = img[..., ::-1]
    side = transform.target_length
    if native:
        if max(img.shape[:2]) > side:
            raise ValueError(f"native=True needs an image of at most {side} px a side, got {img.shape[:2]}")
        zoom = 1.0
    square = isinstance(transform, SquareResize)
    h0, w0 = img.shape[:2]
    if zoom is None:
        shape = (side, side) if square else transform.get_preprocess_shape(h0, w0, side)
    else:
        shape = zoomed_shape(h0, w0, side, zoom)
    if square:
        resized = np.ascontiguousarray(img)
    elif zoom is None:
        resized = transform.apply_image(img)
    else:
        resized = resize_to(img, shape, transform.interpolation)
    x = torch.from_numpy(resized).to(device).permute(2, 0, 1)[None]
    with torch.inference_mode():
        if square:  # SAM 2: to [0, 1], stretched (antialiased bilinear, as torchvision's Resize), normalised
            x = x.float() / 255
            if zoom is None or shape != (h0, w0):
                x = F.interpolate(x, shape, mode="bilinear", align_corners=False, antialias=True)
            x = (x - model.pixel_mean / 255) / (model.pixel_std / 255)
        elif getattr(getattr(model, "preprocessing", None), "normalize", "mean_std") == "min_max":
            x = x.float()
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo).clamp(min=1e-8)
        else:
            x = (x - model.pixel_mean) / model.pixel_std  # uint8 - float32 -> float32
        h, w = x.shape[-2:]
        x = F.pad(x, (0, side - w, 0, side - h))
    return x, (int(img.shape[0]), int(img.shape[1])), (int(h), int(w))
