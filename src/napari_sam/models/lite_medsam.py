"""LiteMedSAM (``lite_medsam``): a TinyViT encoder distilled from MedSAM, at a 256 x 256 input, with SAM's
prompt encoder and mask decoder (bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``).

The encoder is MobileSAM's TinyViT (:mod:`napari_sam.models.tiny_vit`) with LiteMedSAM's 1x1 stem:
``(B, 3, 256, 256) -> (B, 256, 64, 64)``. The prompt encoder and decoder are SAM's, for a 256 input
(``4h = 256``: the low-resolution masks are already at the input size). Its images are resized with
OpenCV's area interpolation and min-max normalised to [0, 1] (:data:`LITE_MEDSAM_PREPROCESSING`).
State-dict keys are exactly those of the official ``lite_medsam.pth``.

``lite_medsam_nano``: the same prompt encoder, decoder and preprocessing behind a small student encoder
(:class:`~napari_sam.models.nano_encoder.NanoEncoder` with its FPN to stride 4, 256 channels) that learned to give
LiteMedSAM's embeddings (``python -m napari_sam.train distill``; docs/training.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .nano_encoder import NanoEncoder
from .sam import Preprocessing, Sam, build_sam, register_arch
from .tiny_vit import TinyViT

LITE_MEDSAM_PREPROCESSING = Preprocessing(resize="area", normalize="min_max")
#: ``lite_medsam_native``: the same network fine-tuned on native-resolution tiles
#: (``lite_medsam_nuclei``): an image smaller than 256 px is embedded at its own scale, zero-padded
LITE_MEDSAM_NATIVE_PREPROCESSING = Preprocessing(resize="area", normalize="min_max", zoom=1.0)


def build_lite_medsam(img_size: int = 256, preprocessing: Preprocessing = LITE_MEDSAM_PREPROCESSING) -> Sam:
    """LiteMedSAM with random weights, in eval mode (the layer configuration of the official code)."""
    encoder = TinyViT(
        img_size=img_size,
        num_classes=0,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        stem="pointwise",
    )
    return build_sam(
        encoder,
        img_size=img_size,
        embedding_size=encoder.out_resolution,
        arch="lite_medsam",
        preprocessing=preprocessing,
    )


def _matches(sd: Mapping[str, Any]) -> bool:
    """A TinyViT with a 1x1 stem (MobileSAM's is 3x3) and no classifier."""
    stem = sd.get("image_encoder.patch_embed.seq.0.c.weight")
    neck = sd.get("image_encoder.neck.0.weight")
    return (
        stem is not None
        and neck is not None
        and tuple(stem.shape) == (32, 3, 1, 1)
        and neck.shape[1] == 320
        and "image_encoder.head.weight" not in sd
    )


def build_lite_medsam_native(img_size: int = 256) -> Sam:
    """LiteMedSAM's network with :data:`LITE_MEDSAM_NATIVE_PREPROCESSING` (same state dict keys; chosen
    by name only, a file of these keys is recognised as ``lite_medsam``)."""
    return build_lite_medsam(img_size, LITE_MEDSAM_NATIVE_PREPROCESSING)


def build_lite_medsam_nano(img_size: int = 256) -> Sam:
    """LiteMedSAM's prompt encoder and decoder (native preprocessing) on a ``nano``-sized student encoder:
    ``(B, 3, 256, 256) -> (B, 256, 64, 64)``, the embedding LiteMedSAM's decoder reads."""
    encoder = NanoEncoder(img_size=img_size, out_chans=256, dims=(24, 48, 80, 128, 192), depths=(2, 2, 2),
                          num_heads=6, out_stride=4)
    grid = img_size // 4
    return build_sam(encoder, img_size=img_size, embedding_size=(grid, grid), arch="lite_medsam_nano",
                     preprocessing=LITE_MEDSAM_NATIVE_PREPROCESSING)


def _matches_nano(sd: Mapping[str, Any]) -> bool:
    """A nano encoder with 256 output channels (the ``nano`` models' have 128)."""
    lat8 = sd.get("image_encoder.lat8.weight")
    return lat8 is not None and lat8.shape[0] == 256 and "image_encoder.stem.0.0.weight" in sd


register_arch("lite_medsam", build_lite_medsam, _matches)
register_arch("lite_medsam_native", build_lite_medsam_native)
register_arch("lite_medsam_nano", build_lite_medsam_nano, _matches_nano)
