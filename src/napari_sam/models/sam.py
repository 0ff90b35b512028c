"""The Sam module (image encoder + prompt encoder + mask decoder) and the architecture registry.

>>> model = build_model("vit_b")          # random weights; napari_sam.weights loads checkpoints
>>> infer_arch(model.state_dict())
'vit_b'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its image: what ``napari_sam.engine.transforms.model_input`` does before the
    encoder (after the conversion to uint8 RGB, before zero-padding to ``img_size``).

    ``resize``: the longest side to ``img_size`` with ``"bilinear"`` (PIL, SAM's) or ``"area"``
    (OpenCV's ``INTER_AREA``, LiteMedSAM's); or ``"square"``: both sides to ``img_size``, bilinear
    with antialiasing, no padding (SAM 2's: torchvision's ``Resize`` of the float image). ``normalize``: ``"mean_std"``, ``(x - pixel_mean) / pixel_std``
    (SAM's), or ``"min_max"``, ``(x - min) / (max - min)`` over the whole resized image, to [0, 1]
    (LiteMedSAM's). ``zoom``: how an image smaller than ``img_size`` is embedded: None, enlarged to
    fill the input (SAM's); a number, scaled by it (1: at its own pixel scale) and zero-padded, as
    tiles are (``napari_sam.engine.transforms.zoomed_shape``; docs/volume.md, "Scale").
    """

    resize: str = "bilinear"
    normalize: str = "mean_std"
    zoom: float | None = None

    def __post_init__(self) -> None:
        if self.resize not in ("bilinear", "area", "square"):
            raise ValueError(f"resize must be 'bilinear', 'area' or 'square', got {self.resize!r}")
        if self.normalize not in ("mean_std", "min_max"):
            raise ValueError(f"normalize must be 'mean_std' or 'min_max', got {self.normalize!r}")
        if self.zoom is not None and not self.zoom > 0:
            raise ValueError(f"zoom must be a positive number or None, got {self.zoom!r}")


SAM_PREPROCESSING = Preprocessing()


class Sam(nn.Module):
    """SAM: ``image_encoder`` -> embedding ``(B, C, h, w)``; ``prompt_encoder`` + ``mask_decoder`` -> masks.

    ``preprocessing`` (:class:`Preprocessing`) says how an image becomes the encoder's input.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    #: channels of the high-resolution feature maps an embedding carries besides ``(C, h, w)``
    #: (SAM 2: ``(32, 64)`` at 4x and 2x the grid; SAM: none), see ``ImageEmbedding.packed``
    high_res_channels: tuple[int, ...] = ()

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
        arch: str = "custom",
        preprocessing: Preprocessing = SAM_PREPROCESSING,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.arch = arch
        self.preprocessing = preprocessing
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square encoder input (1024 for SAM)."""
        return int(self.image_encoder.img_size)

    @property
    def embedding_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding grid."""
        return tuple(self.prompt_encoder.image_embedding_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``x (B, 3, img_size, img_size)`` preprocessed -> ``(embedding (B, C, h, w), None)``: the
        same call as SAM 2's ``Sam2.embed``, whose second item is its high-resolution features."""
        return self.image_encoder(x), None

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(3, H, W)`` or ``(B, 3, H, W)`` pixel values (as ``preprocessing.normalize``
        says, per image) and zero-pad to ``img_size``."""
        if self.preprocessing.normalize == "min_max":
            x = x.float()
            lo = x.amin(dim=(-3, -2, -1), keepdim=True)
            hi = x.amax(dim=(-3, -2, -1), keepdim=True)
            x = (x - lo) / (hi - lo).clamp(min=1e-8)
        else:
            x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def decode(
        self,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask_output: bool,
        high_res: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in model-input pixels -> low-res logits ``(B, C, 4h, 4w)`` and predicted IoUs
        ``(B, C)``: the prompt encoder, then the mask decoder (``features (1 | B, C, h, w)``;
        ``high_res`` is unused by SAM)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(features, image_pe, sparse, dense, multimask_output)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """``(B, C, 4h, 4w)`` logits -> ``(B, C, H, W)`` logits of the original image (unpadded, resized)."""
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction with the official input/output dicts (``image``, ``original_size``,
        ``point_coords``, ``point_labels``, ``boxes``, ``mask_inputs`` -> ``masks``, ``iou_predictions``,
        ``low_res_logits``)."""
        images = torch.stack([self.preprocess(r["image"]) for r in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for record, emb in zip(batched_input, embeddings, strict=True):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                image_embeddings=emb.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs


def build_sam(
    encoder: nn.Module,
    *,
    img_size: int,
    embedding_size: tuple[int, int],
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    arch: str = "custom",
    preprocessing: Preprocessing = SAM_PREPROCESSING,
) -> Sam:
    """Wire ``encoder`` (``(B, 3, img_size, img_size) -> (B, prompt_embed_dim, *embedding_size)``)
    to SAM's prompt encoder and mask decoder; the defaults are SAM's. Returns the model in eval mode."""
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=tuple(embedding_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        arch=arch,
        preprocessing=preprocessing,
    )
    return sam.eval()


_VIT_CONFIGS = {  # embed_dim, depth, num_heads, global_attn_indexes
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def _build_vit(arch: str, img_size: int = 1024, patch_size: int = 16) -> Sam:
    embed_dim, depth, num_heads, global_idx = _VIT_CONFIGS[arch]
    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=global_idx,
    )
    grid = img_size // patch_size
    return build_sam(encoder, img_size=img_size, embedding_size=(grid, grid), arch=arch)


def build_vit_t(img_size: int = 1024) -> Sam:
    """MobileSAM (TinyViT-5M encoder)."""
    encoder = TinyViT(img_size=img_size)
    return build_sam(encoder, img_size=img_size, embedding_size=encoder.out_resolution, arch="vit_t")


def _vit_matcher(arch: str) -> Callable[[Mapping[str, Any]], bool]:
    embed_dim, depth, _, _ = _VIT_CONFIGS[arch]

    def matches(sd: Mapping[str, Any]) -> bool:
        w = sd.get("image_encoder.patch_embed.proj.weight")
        return (
            w is not None and w.shape[0] == embed_dim and _count_blocks(sd, "image_encoder.blocks.") == depth
        )

    return matches


def _vit_t_matches(sd: Mapping[str, Any]) -> bool:
    stem = sd.get("image_encoder.patch_embed.seq.0.c.weight")
    neck = sd.get("image_encoder.neck.0.weight")
    return (
        stem is not None and neck is not None and tuple(stem.shape) == (32, 3, 3, 3) and neck.shape[1] == 320
    )


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    idx = {k[len(prefix) :].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return len({i for i in idx if i.isdigit()})


@dataclass(frozen=True)
class _Arch:
    builder: Callable[..., Sam]
    matches: Callable[[Mapping[str, Any]], bool] | None


_ARCHS: dict[str, _Arch] = {}


def register_arch(
    name: str, builder: Callable[..., Sam], matches: Callable[[Mapping[str, Any]], bool] | None = None
) -> None:
    """Register ``builder(**kwargs) -> Sam`` under ``name``; ``matches(state_dict)`` lets
    :func:`infer_arch` recognise its checkpoints. Re-registering a name replaces it."""
    _ARCHS[name] = _Arch(builder, matches)


def available_archs() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_ARCHS)


def build_model(arch: str, **kwargs: Any) -> Sam:
    """A randomly initialised model of architecture ``arch``, in eval mode, ``model.arch == arch``."""
    try:
        entry = _ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; available: {', '.join(_ARCHS)}") from None
    model = entry.builder(**kwargs)
    model.arch = arch
    return model.eval()


def infer_arch(state_dict: Mapping[str, Any]) -> str:
    """The architecture of a SAM state dict, from its key names and shapes.

    Architectures registered later are tried first, so a specific matcher wins over a general one.
    Raises ``ValueError`` describing what was found when nothing matches.
    """
    for name, entry in reversed(_ARCHS.items()):
        if entry.matches is not None and entry.matches(state_dict):
            return name
    keys = list(state_dict)
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    found = [f"{len(keys)} keys"]
    if w is not None:
        found.append(
            f"ViT patch embedding {tuple(w.shape)} with {_count_blocks(state_dict, 'image_encoder.blocks.')} blocks"
        )
    h = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if h is not None:
        found.append(
            f"Hiera trunk patch embedding {tuple(h.shape)} with "
            f"{_count_blocks(state_dict, 'image_encoder.trunk.blocks.')} blocks"
        )
    enc = sorted({k.split(".")[1] for k in keys if k.startswith("image_encoder.") and k.count(".") > 1})
    found.append(f"image_encoder parts {enc[:8]}" if enc else f"first keys {keys[:5]}")
    raise ValueError(f"cannot infer the SAM architecture ({'; '.join(found)}); known: {', '.join(_ARCHS)}")


for _name in _VIT_CONFIGS:
    register_arch(_name, lambda _a=_name, **kw: _build_vit(_a, **kw), _vit_matcher(_name))
register_arch("vit_t", build_vit_t, _vit_t_matches)
