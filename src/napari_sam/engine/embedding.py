"""An image's embedding as a value (``ImageEmbedding``), with the fast decoder's per-image work that
may travel with it (``DecoderPreparation``)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from napari_sam.models.common import weights_key


@dataclass
class ImageEmbedding:
    """The encoder output for one image.

    Attributes:
        features: (1, C, h, w) float tensor (C=256, h=w=64 for SAM).
        original_size: (H, W) of the image given to the predictor.
        input_size: (h', w') of the resized image, before padding to the square model input.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    #: the mask decoder's per-image work for these features (``SamPredictor.prepare_embedding``),
    #: used by ``set_image_embedding`` of a predictor with the same, unchanged decoder; not saved
    prepared: Any = field(default=None, repr=False, compare=False)

    def to(self, device: str | torch.device) -> ImageEmbedding:
        """A copy whose features live on ``device`` (self when they already do; the copy without
        the decoder's preparation)."""
        if self.features.device == torch.device(device):
            return self
        return replace(self, features=self.features.to(device), prepared=None)

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied) without the decoder's preparation."""
        return {**self.__dict__, "prepared": None}

    def without_preparation(self) -> ImageEmbedding:
        """The same embedding without the decoder's preparation (self when it has none)."""
        return self if self.prepared is None else replace(self, prepared=None)

    @property
    def nbytes(self) -> int:
        """Memory held by the features, in bytes (the decoder's preparation, when there is one,
        holds about 6x more for SAM: ``prepared.nbytes``)."""
        return self.features.element_size() * self.features.numel()


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
