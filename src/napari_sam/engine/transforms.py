"""Resize to the model's input size ("longest side"), and move prompts with the image.

This is the official ``segment_anything/utils/transforms.py`` without torchvision:
``apply_image`` resizes with ``PIL.Image.resize(..., BILINEAR)``, which is exactly what
torchvision's PIL path does, so the result is bit-identical to the official transform.

Coordinates are SAM's: points are (x, y), boxes are (x0, y0, x1, y1), in pixels;
image sizes are (H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from napari_sam.engine.images import to_sam_image


class ResizeLongestSide:
    """Resize images so that the longest side is ``target_length``; transform coords and boxes to match.

    Numpy and torch variants of each method are provided. Sizes are (H, W); coords are (x, y).
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize a uint8 image (H, W) or (H, W, C) to (newh, neww[, C]) uint8 (PIL bilinear)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(
                f"apply_image expects a non-empty uint8 array (H, W) or (H, W, C), "
                f"got shape {image.shape} dtype {image.dtype}"
            )
        newh, neww = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        if (newh, neww) == image.shape[:2]:
            # PIL returns an exact copy in this case as well
            return np.array(image, copy=True)
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
        """(newh, neww) with the longest side ``long_side_length`` (rounded half up, as the official)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)


def model_input(
    image: np.ndarray, model, transform, device, image_format: str = "RGB", contrast_limits=None, native: bool = False
):
    """``image`` -> a SAM encoder's input ``(1, 3, S, S)`` on ``device`` (``to_sam_image``,
    channels flipped when ``image_format`` differs from the model's, resized with ``transform``
    unless ``native``, normalised with the model's pixel mean and std, zero-padded), with its
    original ``(H, W)`` and its ``(h, w)`` before padding."""
    img = to_sam_image(image, contrast_limits=contrast_limits)
    if image_format != getattr(model, "image_format", "RGB"):
        img = img[..., ::-1]
    side = transform.target_length
    if native and max(img.shape[:2]) > side:
        raise ValueError(f"native=True needs an image of at most {side} px a side, got {img.shape[:2]}")
    resized = np.ascontiguousarray(img) if native else transform.apply_image(img)
    x = torch.from_numpy(resized).to(device).permute(2, 0, 1)[None]
    with torch.inference_mode():
        x = (x - model.pixel_mean) / model.pixel_std  # uint8 - float32 -> float32
        h, w = x.shape[-2:]
        x = F.pad(x, (0, side - w, 0, side - h))
    return x, (int(img.shape[0]), int(img.shape[1])), (int(h), int(w))
