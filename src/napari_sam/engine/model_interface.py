"""What the engine asks of a model, in one place.

napari-sam's models (``napari_sam.models.sam.Sam`` for SAM, MobileSAM, LiteMedSAM and the nano
models; ``napari_sam.models.sam2.Sam2`` for SAM 2.1) say how they embed an image (``embed``) and
decode prompts (``decode``). A model with only the official segment-anything interface (an
``image_encoder`` with ``img_size``, a ``prompt_encoder`` and a ``mask_decoder``, e.g. the official
``segment_anything`` ``Sam``) is driven through those parts, as the official predictor does.
"""

from __future__ import annotations

import torch


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
