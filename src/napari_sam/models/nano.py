"""The project's own small SAM architectures, ``"nano"`` and ``"nano_l"``: a 512-px FPN encoder + a slim
SAM decoder (``nano_l``: a wider, deeper encoder, same decoder).

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
from .sam import Preprocessing, Sam, build_sam, register_arch

NANO_CONFIG: dict[str, Any] = {
    "img_size": 512,
    "prompt_embed_dim": 128,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 1024,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 128,
}


#: images smaller than the 512 px input are embedded at their own pixel scale, zero-padded, not
#: enlarged to fill it (docs/volume.md, "Scale": on GoNuclear's 100 px slices 1-click Dice 0.58 vs 0.08)
NANO_PREPROCESSING = Preprocessing(zoom=1.0)

#: encoder sizes per variant: channels at strides 2/4/8/16/32, blocks at 8/16/32, attention heads
NANO_ENCODERS: dict[str, dict[str, Any]] = {
    "nano": {"dims": (24, 48, 80, 128, 192), "depths": (2, 2, 2), "num_heads": 6},
    "nano_l": {"dims": (32, 64, 128, 192, 256), "depths": (3, 4, 2), "num_heads": 8},
}


def build_nano(img_size: int = 512, variant: str = "nano") -> Sam:
    """A randomly initialised ``"nano"`` (or ``"nano_l"``) Sam; trained weights come through
    ``napari_sam.weights`` (``nano_nuclei``)."""
    cfg = dict(NANO_CONFIG, img_size=img_size)
    encoder = NanoEncoder(img_size=img_size, out_chans=cfg["prompt_embed_dim"], **NANO_ENCODERS[variant])
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
        arch=variant,
        preprocessing=NANO_PREPROCESSING,
    )


def _matcher(variant: str):
    d8 = NANO_ENCODERS[variant]["dims"][2]

    def matches(state_dict: Mapping[str, Any]) -> bool:
        """True for state dicts of this variant (the FPN encoder's key names, stride-8 width, 128 channels out)."""
        lat8 = state_dict.get("image_encoder.lat8.weight")
        return (lat8 is not None and lat8.shape[1] == d8 and lat8.shape[0] == NANO_CONFIG["prompt_embed_dim"]
                and "image_encoder.stem.0.0.weight" in state_dict)

    return matches


nano_matches = _matcher("nano")
for _variant in NANO_ENCODERS:
    register_arch(_variant, lambda _v=_variant, **kw: build_nano(variant=_v, **kw), _matcher(_variant))
