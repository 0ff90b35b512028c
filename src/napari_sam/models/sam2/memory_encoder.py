"""SAM 2's memory encoder: a frame's (slice's) image features fused with its predicted mask into a
64-channel memory, plus that memory's position encoding. Shaped like
``sam2/modeling/memory_encoder.py`` (same modules, attribute names and state-dict keys, so the
official ``sam2.1_hiera_*.pt`` weights load as they are).

At 1024 px: masks ``(B, 1, 1024, 1024)`` -> :class:`MaskDownSampler` ``(B, 256, 64, 64)``, added to
the projected image features ``(B, 256, 64, 64)``, mixed by two ConvNeXt blocks (:class:`Fuser` of
:class:`CXBlock`), projected to ``(B, 64, 64, 64)``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d, act_inplace
from .position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Downsample masks by ``total_stride`` in steps of ``stride`` (conv, LayerNorm2d, activation),
    channels growing by ``stride**2`` each step, then a 1x1 conv to ``embed_dim``:
    ``(B, 1, H, W) -> (B, embed_dim, H / total_stride, W / total_stride)``.

    ``encoder`` is an ``nn.Sequential`` (``encoder.{3i}`` conv, ``encoder.{3i+1}`` norm,
    ``encoder.{3i+2}`` activation, last the projection), as in the official state dicts."""

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        self.encoder = nn.Sequential()
        mask_in_chans = mask_out_chans = 1
        for _ in range(num_layers):
            mask_out_chans = mask_in_chans * stride**2
            self.encoder.append(
                nn.Conv2d(
                    mask_in_chans, mask_out_chans, kernel_size=kernel_size, stride=stride, padding=padding
                )
            )
            self.encoder.append(LayerNorm2d(mask_out_chans))
            self.encoder.append(activation())
            mask_in_chans = mask_out_chans
        self.encoder.append(nn.Conv2d(mask_out_chans, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W) -> (B, embed_dim, H / total_stride, W / total_stride)``."""
        return self.encoder(x)


class CXBlock(nn.Module):
    """A ConvNeXt block: depthwise ``kernel_size`` conv, LayerNorm, pointwise MLP (4x, GELU) scaled
    by ``gamma`` (layer scale), residual: ``(B, dim, H, W) -> (B, dim, H, W)``. The pointwise
    layers are ``nn.Linear`` applied channels-last, as in the official.

    ``drop_path`` (stochastic depth, training only) drops the whole residual branch of a sample
    with that probability."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W) -> (B, dim, H, W)``, in ``x``'s memory format.

        The depthwise conv runs channels-last, so its output permuted to ``(B, H, W, dim)`` is
        already contiguous for the LayerNorm (fused, over the last axis) and the pointwise layers;
        GELU in place outside autograd; the layer scale and residual in one ``addcmul``."""
        y = self.dwconv(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        y = F.layer_norm(y, (y.shape[-1],), self.norm.weight, self.norm.bias, self.norm.eps)
        y = self.pwconv2(act_inplace(self.act, self.pwconv1(y))).permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            y = y * x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep).div_(keep)
        if self.gamma is None:
            return x + y
        return torch.addcmul(x, y, self.gamma[:, None, None])


class Fuser(nn.Module):
    """An optional 1x1 input projection (``input_projection``, needs ``dim``), then ``num_layers``
    copies of ``layer``: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(
        self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False
    ) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        if input_projection:
            if dim is None:
                raise ValueError("input_projection needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features plus a mask -> a memory and its position encoding.

    Args:
        out_dim: memory channels (64 in SAM 2.1); ``out_proj`` is an identity when equal to ``in_dim``.
        mask_downsampler: masks ``(B, 1, H, W)`` -> ``(B, in_dim, h, w)``.
        fuser: mixes ``(B, in_dim, h, w)``.
        position_encoding: ``(B, out_dim, h, w)`` -> its encoding ``(B, out_dim, h, w)``.
        in_dim: channels of the image features.
    """

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = nn.Identity()
        if out_dim != in_dim:
            self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """
        Args:
            pix_feat: ``(B, in_dim, h, w)`` image features (moved to the masks' device).
            masks: ``(B, 1, H, W)`` mask logits, or probabilities / binary masks with ``skip_mask_sigmoid``.

        Returns:
            ``{"vision_features": (B, out_dim, h, w), "vision_pos_enc": [(B, out_dim, h, w)]}``.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        # the fuser's ConvNeXt blocks run channels-last (see CXBlock); the memory is returned contiguous
        x = self.fuser(x.contiguous(memory_format=torch.channels_last))
        x = self.out_proj(x).contiguous()
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}


def build_memory_encoder(arch: str | None = None) -> MemoryEncoder:
    """SAM 2.1's memory encoder (the same in all four configs, ``sam2.1_hiera_{t,s,b+,l}.yaml``):
    masks downsampled 16x by four 3x3 stride-2 convs, two 7x7 ConvNeXt blocks, 64-channel memory."""
    from .memory_attention import check_arch

    check_arch(arch)
    return MemoryEncoder(
        out_dim=64,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(
            CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
            num_layers=2,
        ),
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=64, normalize=True, scale=None, temperature=10000
        ),
    )
