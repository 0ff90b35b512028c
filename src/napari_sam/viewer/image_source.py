"""The image being segmented: the image layer, its RGB-composite channel axis and the slice on screen.

``ImageSource`` is shared by the parts of ``SegmentAnything`` (embeddings, preview, label writer, stacks):
they ask it for the layer, the slice index on screen and the settings an embedding depends on,
instead of each keeping its own copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from napari_sam.errors import SamUserError
from napari_sam.viewer.slicing import check_index, current_index
from napari_sam.viewer.stack import Stack, stack_of


class ImageSource:
    """The image layer of a viewer that SAM segments (None until one is chosen).

    ``channel_axis``: a leading data axis whose first three channels form an RGB composite (None:
    the slice on screen as it is).
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layer: Image | None = None
        self.channel_axis: int | None = None

    def require(self) -> Image:
        """The image layer; ``SamUserError`` when none is chosen."""
        if self.layer is None:
            raise SamUserError("choose an image layer first")
        return self.layer

    def current_index(self) -> tuple[int, ...]:
        """Leading-axis index (image data coordinates) of the slice on screen; () for 2D images."""
        return current_index(self.viewer, self.require())

    def index_or_current(self, index: tuple[int, ...] | None) -> tuple[int, ...]:
        """``index`` as a checked tuple (``SamUserError`` outside the image; negative indices do not
        wrap), or the slice on screen when None."""
        return self.current_index() if index is None else self.check(index)

    def check(self, index: Any) -> tuple[int, ...]:
        """``index`` as a tuple of ints after checking it is a slice of the image (see ``check_index``)."""
        return check_index(self.require(), index)

    def settings(self) -> tuple[tuple[float, float] | None, int | None]:
        """(contrast limits used for the SAM image (None for uint8), composite channel axis or None)."""
        img = self.require()
        limits = None if np.dtype(img.dtype) == np.uint8 else tuple(float(v) for v in img.contrast_limits)
        return limits, (None if img.rgb else self.channel_axis)

    def stack(self, index: tuple[int, ...] | None = None) -> Stack:
        """The stack of slice ``index`` (default: on screen) of the image layer."""
        return stack_of(self.require(), self.index_or_current(index), self.settings()[1])
