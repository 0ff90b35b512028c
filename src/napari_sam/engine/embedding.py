"""An image's embedding as a value (``ImageEmbedding``), with the fast decoder's per-image work that
may travel with it (``DecoderPreparation``)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from napari_sam.models.common import weights_key


@dataclass
class ImageEmbedding:
    """The encoder output for one image.

    Attributes:
        features: (1, C, h, w) float tensor (C=256, h=w=64 for SAM).
        original_size: (H, W) of the image given to the predictor.
        input_size: (h', w') of the resized image, before padding to the square model input.
        high_res: SAM 2's high-resolution features for its mask decoder, ``((1, 32, 4h, 4w),
            (1, 64, 2h, 2w))``; None for SAM.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res: tuple[torch.Tensor, ...] | None = None
    #: the mask decoder's per-image work for these features (``SamPredictor.prepare_embedding``),
    #: used by ``set_image_embedding`` of a predictor with the same, unchanged decoder; not saved
    prepared: Any = field(default=None, repr=False, compare=False)

    def to(self, device: str | torch.device) -> ImageEmbedding:
        """A copy whose features live on ``device`` (self when they already do; the copy without
        the decoder's preparation)."""
        if self.features.device == torch.device(device):
            return self
        high_res = None if self.high_res is None else tuple(t.to(device) for t in self.high_res)
        return replace(self, features=self.features.to(device), high_res=high_res, prepared=None)

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied) without the decoder's preparation."""
        return {**self.__dict__, "prepared": None}

    def without_preparation(self) -> ImageEmbedding:
        """The same embedding without the decoder's preparation (self when it has none)."""
        return self if self.prepared is None else replace(self, prepared=None)

    @property
    def nbytes(self) -> int:
        """Memory held by the features (and SAM 2's high-resolution ones), in bytes (the decoder's
        preparation, when there is one, holds about 6x more for SAM: ``prepared.nbytes``)."""
        return sum(t.element_size() * t.numel() for t in (self.features, *(self.high_res or ())))

    def packed(self) -> torch.Tensor:
        """The features as one ``(1, C', h, w)`` tensor: SAM's as they are; SAM 2's with its
        high-resolution maps folded into channels (``pixel_unshuffle``, exact), so that stores and
        caches of ``(1, C, h, w)`` slices hold either. :meth:`unpacked` is the inverse."""
        if self.high_res is None:
            return self.features
        h = self.features.shape[-1]
        folded = [F.pixel_unshuffle(t, t.shape[-1] // h) for t in self.high_res]
        return torch.cat([self.features, *folded], dim=1)

    def unpacked(self, packed: torch.Tensor) -> ImageEmbedding:
        """An embedding with this one's sizes and high-resolution layout whose features are
        ``packed`` (:meth:`packed`'s layout; SAM 2: ``(1, 256 + 32*16 + 64*4, h, w)``)."""
        if self.high_res is None:
            return replace(self, features=packed, prepared=None)
        return replace(self, **unpack(packed, [t.shape[1] for t in self.high_res]), prepared=None)


def unpack(packed: torch.Tensor, high_res_channels: list[int] | None) -> dict:
    """``features`` and ``high_res`` of a :meth:`ImageEmbedding.packed` tensor whose high-resolution
    maps have ``high_res_channels`` channels (SAM 2: ``[32, 64]``; None: SAM, no such maps)."""
    if not high_res_channels:
        return {"features": packed, "high_res": None}
    n_hr = len(high_res_channels)
    c = packed.shape[1] - sum(ch * 4 ** (n_hr - i) for i, ch in enumerate(high_res_channels))
    parts, start = [packed[:, :c]], c
    for i, ch in enumerate(high_res_channels):
        r = 2 ** (n_hr - i)  # SAM 2: 4x then 2x the embedding grid
        parts.append(F.pixel_shuffle(packed[:, start : start + ch * r * r], r))
        start += ch * r * r
    return {"features": parts[0], "high_res": tuple(parts[1:])}


@dataclass(frozen=True)
class DecoderPreparation:
    """A mask decoder's per-image work on the fast path (``value``: ``FastMaskDecoder.prepare_image``) and what it was
    made with: the decoder (a weak reference) and its weights' storage and version counters."""

    decoder: weakref.ref
    weights: tuple
    value: Any
    nbytes: int  # of the tensors it references (for SAM ~8 of ~24 MB shared by all images)

    def fits(self, decoder: torch.nn.Module) -> bool:
        """Whether it was made by ``decoder`` with the weights it has now."""
        return self.decoder() is decoder and self.weights == weights_key(decoder)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) dataclass/list/tuple, each storage counted once."""
    seen: dict[int, int] = {}
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, list | tuple):
            stack.extend(o)
        elif hasattr(o, "__dataclass_fields__"):
            stack.extend(getattr(o, f) for f in o.__dataclass_fields__)
    return sum(seen.values())


def check_embedding(emb: ImageEmbedding, embedding_size: tuple[int, int], img_size: int) -> None:
    """A clear error for an embedding that does not fit a model with this grid and input side."""
    if not isinstance(emb, ImageEmbedding):
        raise TypeError(f"expected an ImageEmbedding, got {type(emb).__name__}")
    f = emb.features
    if f.ndim != 4 or f.shape[0] != 1 or tuple(f.shape[-2:]) != tuple(embedding_size):
        raise ValueError(
            f"embedding features must have shape (1, C, {embedding_size[0]}, "
            f"{embedding_size[1]}) for this model, got {tuple(f.shape)}"
        )
    if not all(0 < s <= img_size for s in emb.input_size) or min(emb.original_size) <= 0:
        raise ValueError(
            f"embedding input_size {tuple(emb.input_size)} must be within the model's "
            f"{img_size}x{img_size} input, and original_size {tuple(emb.original_size)} positive"
        )
