"""Stacks of a napari image layer for the engines.

No napari import (layers are duck-typed). Coordinates: the stack axis is the image's last leading
(slider) axis: z of (Z, Y, X), t of (T, Y, X), z of (T, Z, Y, X) within the current t. Slices are
(row, col) arrays; the engines get SAM's uint8 RGB slices, converted exactly like the interactive
encode (layer contrast limits, optional RGB composite of a channel axis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.engine.images import to_sam_image
from napari_sam.errors import SamUserError
from napari_sam.viewer.slicing import slice_image, spatial_shape


@dataclass(frozen=True)
class Stack:
    """Where a slice sits: ``outer`` (indices of the axes before the stack axis), ``z`` (position along
    it), ``axis`` (data axis of the stack), ``n`` (slices), ``hw`` (rows, cols)."""

    outer: tuple[int, ...]
    z: int
    axis: int
    n: int
    hw: tuple[int, int]

    def index(self, z: int) -> tuple[int, ...]:
        """Leading-axis index of slice ``z`` of this stack."""
        return (*self.outer, int(z))


def stack_of(image: Any, index: tuple[int, ...], channel_axis: int | None = None) -> Stack:
    """The stack that contains slice ``index`` (leading-axis index) of ``image``."""
    shape = spatial_shape(image)
    if len(shape) < 3 or not index:
        raise SamUserError("the image has no slider axis: 3D actions need a (Z, Y, X), (T, Y, X) or nD image")
    axis = len(index) - 1
    if channel_axis is not None and channel_axis == axis and not getattr(image, "rgb", False):
        raise SamUserError(f"axis {axis} is the RGB-composite channel axis, it cannot be the stack axis")
    return Stack(tuple(int(i) for i in index[:-1]), int(index[-1]), axis, int(shape[axis]), tuple(shape[-2:]))


class StackSlices:
    """Lazy (n, H, W, 3) uint8 volume: slice ``i`` of a stack as SAM sees it (read on access only).

    Indexable like an array along axis 0 (``v[i]``, ``v[i, :, :, :]``), which is all
    ``EmbeddingStore`` and ``generate_labels_stack`` need.
    """

    def __init__(self, image: Any, stack: Stack, limits: tuple[float, float] | None, chan: int | None) -> None:
        self.image, self.stack, self.limits, self.chan = image, stack, limits, chan
        self.shape = (stack.n, *stack.hw, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return self.stack.n

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        arr, rgb = slice_image(self.image, self.stack.index(int(key[0])), self.chan)
        out = to_sam_image(arr, contrast_limits=self.limits, rgb=rgb)
        return out[key[1:]] if len(key) > 1 else out
