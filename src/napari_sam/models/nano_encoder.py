"""The image encoder of the project's small ``"nano"`` SAM (conv stem + FPN + global attention).

``NanoEncoder.forward(x: (B, 3, S, S) float, normalized and padded like SAM) -> (B, C, S/8, S/8)``.
Unlike SAM's ViT, the output grid is stride 8 (64x64 for ``img_size=512``), so the decoder's
low-res masks and ``mask_input`` stay 256x256 exactly like SAM. With ``out_stride=4`` the FPN goes on
to stride 4 (64x64 for a 256 input, LiteMedSAM's grid) and the neck's 3x3 conv is depthwise (a full
3x3 conv of 256 channels on that grid would cost more than the rest of the encoder). The network is fully
convolutional plus position-free global attention (positions come from depthwise convs), so it
accepts any input side that is a multiple of 32 (training runs on 256x256 windows).

Layout (channels at stride 2/4/8/16/32): a conv stem (24, 48), inverted-residual stages at
stride 8 and 16, a few global-attention transformer blocks at stride 32, a top-down FPN back to
stride 8, and SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to ``out_chans``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d (+ GELU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual. (B,C,H,W) -> (B,C,H,W)."""

    def __init__(self, dim: int, expand: int = 2) -> None:
        super().__init__()
        hidden = dim * expand
        self.pw1 = conv_bn(dim, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, groups=hidden)
        self.pw2 = conv_bn(hidden, dim, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.dw(self.pw1(x)))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block on a (B,C,H,W) map with a depthwise-conv position encoding."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 3.0) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class NanoEncoder(nn.Module):
    """Small FPN encoder for SAM-style prompting; output stride 8, ``out_chans`` channels."""

    def __init__(
        self,
        img_size: int = 512,
        out_chans: int = 128,
        dims: tuple[int, int, int, int, int] = (24, 48, 80, 128, 192),
        depths: tuple[int, int, int] = (2, 2, 2),
        num_heads: int = 6,
        out_stride: int = 8,
    ) -> None:
        """``dims``: channels at strides 2, 4, 8, 16, 32; ``depths``: inverted-residual blocks at
        strides 8 and 16, attention blocks at stride 32; ``out_stride``: 8 or 4."""
        super().__init__()
        if out_stride not in (4, 8):
            raise ValueError(f"out_stride must be 4 or 8, got {out_stride!r}")
        self.img_size = img_size
        self.out_stride = out_stride
        d2, d4, d8, d16, d32 = dims
        self.stem = nn.Sequential(conv_bn(3, d2, 3, 2), conv_bn(d2, d4, 3, 2), InvertedResidual(d4))
        self.stage8 = nn.Sequential(conv_bn(d4, d8, 3, 2), *[InvertedResidual(d8) for _ in range(depths[0])])
        self.stage16 = nn.Sequential(conv_bn(d8, d16, 3, 2), *[InvertedResidual(d16) for _ in range(depths[1])])
        self.down32 = conv_bn(d16, d32, 3, 2)
        self.blocks = nn.ModuleList([AttentionBlock(d32, num_heads) for _ in range(depths[2])])
        self.lat32 = nn.Conv2d(d32, out_chans, 1)
        self.lat16 = nn.Conv2d(d16, out_chans, 1)
        self.lat8 = nn.Conv2d(d8, out_chans, 1)
        self.lat4 = nn.Conv2d(d4, out_chans, 1) if out_stride == 4 else None
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False, groups=out_chans if out_stride == 4 else 1),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, out_chans, S/out_stride, S/out_stride); S a multiple of 32."""
        f4 = self.stem(x)
        f8 = self.stage8(f4)
        f16 = self.stage16(f8)
        f32 = self.down32(f16)
        for blk in self.blocks:
            f32 = blk(f32)
        p = self.lat32(f32)
        p = self.lat16(f16) + F.interpolate(p, size=f16.shape[-2:], mode="nearest")
        p = self.lat8(f8) + F.interpolate(p, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        if self.lat4 is not None:
            p = self.lat4(f4) + F.interpolate(p, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(p)
