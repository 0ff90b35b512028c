"""What the engine asks of a model, in one place.

napari-sam's models (``napari_sam.models.sam.Sam`` for SAM, MobileSAM, LiteMedSAM and the nano
models; ``napari_sam.models.sam2.Sam2`` for SAM 2.1) say how they embed an image (``embed``) and
decode prompts (``decode``). A model with only the official segment-anything interface (an
``image_encoder`` with ``img_size``, a ``prompt_encoder`` and a ``mask_decoder``, e.g. the official
``segment_anything`` ``Sam``) is driven through those parts, as the official predictor does.
:func:`encode_images` turns images into ``ImageEmbedding`` s with the model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from napari_sam.engine.device import encoder_context
from napari_sam.engine.embedding import ImageEmbedding
from napari_sam.engine.transforms import model_input
from napari_sam.errors import SamUserError


def img_size(model: torch.nn.Module) -> int:
    """Side of the model's square encoder input (1024 for SAM and SAM 2)."""
    size = getattr(model, "img_size", None)
    return int(size if size is not None else model.image_encoder.img_size)


def embed(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Encoder input ``(B, 3, S, S)`` -> ``(features (B, C, h, w), high-res features or None)``."""
    if hasattr(model, "embed"):
        return model.embed(x)
    return model.image_encoder(x), None


def decode(
    model: torch.nn.Module,
    features: torch.Tensor,
    image_pe: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
    multimask_output: bool,
    high_res: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts in model-input pixels -> low-res logits ``(B, C, 4h, 4w)`` and IoUs ``(B, C)``."""
    if hasattr(model, "decode"):
        return model.decode(features, image_pe, points, boxes, masks, multimask_output, high_res)
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return model.mask_decoder(features, image_pe, sparse, dense, multimask_output)


def encode_images(
    model: torch.nn.Module, transform: Any, device: torch.device, autocast: torch.dtype | None,
    images: Sequence[np.ndarray], image_format: str, contrast_limits: Any, native: bool, zoom: float | None,
    batch_size: int,
) -> list[ImageEmbedding]:
    """One ``ImageEmbedding`` per image (``model_input``: the model's resize and normalisation, ``zoom``,
    ``native``), the encoder run on up to ``batch_size`` images at once under ``autocast``; features are
    kept as float32 and each embedding owns its tensors (a view would keep the whole batch alive)."""
    if image_format not in ("RGB", "BGR"):
        raise SamUserError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if batch_size < 1:
        raise SamUserError(f"batch_size must be at least 1 (images per encoder run), got {batch_size}")
    out: list[ImageEmbedding] = []
    for start in range(0, len(images), batch_size):
        inputs = [
            model_input(im, model, transform, device, image_format, contrast_limits, native, zoom)
            for im in images[start : start + batch_size]
        ]
        with torch.inference_mode():
            x = torch.cat([x for x, _, _ in inputs])
            with encoder_context(device, autocast, len(x)):
                features, high_res = embed(model, x)
            features = features.float()
            high_res = None if high_res is None else [t.float() for t in high_res]
        if len(inputs) == 1:
            out.append(ImageEmbedding(features, inputs[0][1], inputs[0][2], None if high_res is None else tuple(high_res)))
            continue
        for i, (_, orig, size) in enumerate(inputs):
            hr = None if high_res is None else tuple(t[i : i + 1].clone() for t in high_res)
            out.append(ImageEmbedding(features[i : i + 1].clone(), orig, size, hr))
    return out
