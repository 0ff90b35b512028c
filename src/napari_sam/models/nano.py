"""The project's own small SAM architecture, ``"nano"``: a 512-px FPN encoder + a slim SAM decoder.

Same three parts and the same prompt/mask interfaces as SAM, so the predictor, widget, volume loop
and automatic masks work unchanged:

- ``img_size = 512``; the encoder (:class:`NanoEncoder`) outputs a 64x64 grid (stride 8), so the
  low-res masks and ``mask_input`` are 256x256 exactly like SAM.
- ``prompt_embed_dim = 128``; two-way transformer with 2 layers, 4 heads, MLP 1024; IoU head 128.

>>> from napari_sam.models import build_model
>>> build_model("nano").img_size
512
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .nano_encoder import NanoEncoder
from .sam import Sam, build_sam, register_arch

NANO_CONFIG: dict[str, Any] = {
    "img_size": 512,
    "prompt_embed_dim": 128,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 1024,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 128,
}


def build_nano(img_size: int = 512) -> Sam:
    """A randomly initialised ``"nano"`` Sam (load ``nano_nuclei`` weights via ``napari_sam.weights``)."""
    cfg = dict(NANO_CONFIG, img_size=img_size)
    encoder = NanoEncoder(img_size=img_size, out_chans=cfg["prompt_embed_dim"])
    grid = img_size // 8
    return build_sam(
        encoder,
        img_size=img_size,
        embedding_size=(grid, grid),
        prompt_embed_dim=cfg["prompt_embed_dim"],
        mask_in_chans=cfg["mask_in_chans"],
        decoder_depth=cfg["decoder_depth"],
        decoder_mlp_dim=cfg["decoder_mlp_dim"],
        decoder_num_heads=cfg["decoder_num_heads"],
        iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        arch="nano",
    )


def nano_matches(state_dict: Mapping[str, Any]) -> bool:
    """True for state dicts of :func:`build_nano` models (the FPN encoder's key names)."""
    return "image_encoder.lat8.weight" in state_dict and "image_encoder.stem.0.0.weight" in state_dict


register_arch("nano", build_nano, nano_matches)
