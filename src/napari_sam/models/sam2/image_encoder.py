"""SAM 2's image encoder (``sam2/modeling/backbones/image_encoder.py``): the Hiera trunk, a feature
pyramid neck over its stages, and the four SAM 2.1 configurations (``configs/sam2.1/*.yaml``) as data.

``ImageEncoder(sample)`` returns Meta's dict: ``vision_features`` (the coarsest kept level,
``(B, d_model, H/16, W/16)``), ``vision_pos_enc`` and ``backbone_fpn`` (lists, finest first:
``(B, d_model, H/4, W/4)``, ``H/8``, ``H/16``; the coarsest ``H/32`` level is dropped by ``scalp=1``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.models.sam2.hiera import Hiera
from napari_sam.models.sam2.position_encoding import PositionEmbeddingSine


class ImageEncoder(nn.Module):
    """``trunk`` (Hiera) then ``neck`` (:class:`FpnNeck`), the ``scalp`` coarsest levels discarded."""

    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        assert self.trunk.channel_list == self.neck.backbone_channel_list, (
            f"Channel dims of trunk and neck do not match. Trunk: {self.trunk.channel_list}, "
            f"neck: {self.neck.backbone_channel_list}"
        )

    def forward(self, sample: torch.Tensor) -> dict[str, Any]:
        """``sample (B, 3, H, W)`` (normalised) -> ``{"vision_features", "vision_pos_enc", "backbone_fpn"}``."""
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:  # discard the lowest resolution features
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


class FpnNeck(nn.Module):
    """A feature pyramid without output convolutions: each trunk level projected to ``d_model`` by a
    convolution; levels in ``fpn_top_down_levels`` also get the coarser level's result, upsampled 2x
    (``fpn_interp_model``) and summed (``fuse_type="sum"``) or averaged. Input: the trunk's list
    (finest first); output: features and their sine position encodings, both lists finest first."""

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.position_encoding = position_encoding
        self.convs = nn.ModuleList()
        self.backbone_channel_list = backbone_channel_list
        self.d_model = d_model
        for dim in backbone_channel_list:
            current = nn.Sequential()
            current.add_module(
                "conv",
                nn.Conv2d(dim, d_model, kernel_size=kernel_size, stride=stride, padding=padding),
            )
            self.convs.append(current)
        self.fpn_interp_model = fpn_interp_model
        assert fuse_type in ["sum", "avg"]
        self.fuse_type = fuse_type
        # levels whose outputs get top-down features (default: all)
        if fpn_top_down_levels is None:
            fpn_top_down_levels = range(len(self.convs))
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        assert len(xs) == len(self.convs)
        out: list[torch.Tensor] = [None] * len(self.convs)  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * len(self.convs)  # type: ignore[list-item]
        prev_features = None
        n = len(self.convs) - 1
        for i in range(n, -1, -1):  # top-down: from low to high resolution
            lateral_features = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev_features is not None:
                top_down_features = F.interpolate(
                    prev_features.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=(None if self.fpn_interp_model == "nearest" else False),
                    antialias=False,
                )
                prev_features = lateral_features + top_down_features
                if self.fuse_type == "avg":
                    prev_features /= 2
            else:
                prev_features = lateral_features
            out[i] = prev_features
            pos[i] = self.position_encoding(prev_features).to(prev_features.dtype)
        return out, pos


# The SAM 2.1 configurations (configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml): Hiera's arguments (others
# at their defaults) and the neck's; all four use scalp=1 and a 256-wide neck.
TRUNK_CONFIGS: dict[str, dict[str, Any]] = {
    "sam2.1_hiera_tiny": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "sam2.1_hiera_small": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "sam2.1_hiera_base_plus": dict(embed_dim=112, num_heads=2),
    "sam2.1_hiera_large": dict(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8),
    ),
}  # fmt: skip
NECK_CONFIG: dict[str, Any] = dict(d_model=256, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
SCALP = 1


def build_image_encoder(arch: str) -> ImageEncoder:
    """SAM 2.1's image encoder for ``arch`` (``"sam2.1_hiera_tiny"``, ``_small``, ``_base_plus``,
    ``_large``), freshly initialised (load the official state dict's ``image_encoder.*`` into it)."""
    if arch not in TRUNK_CONFIGS:
        raise ValueError(f"unknown SAM 2.1 architecture {arch!r}; known: {sorted(TRUNK_CONFIGS)}")
    trunk = Hiera(**TRUNK_CONFIGS[arch])
    position_encoding = PositionEmbeddingSine(
        num_pos_feats=256, temperature=10000, normalize=True, scale=None
    )
    neck = FpnNeck(position_encoding, backbone_channel_list=trunk.channel_list, **NECK_CONFIG)
    return ImageEncoder(trunk, neck, scalp=SCALP)
