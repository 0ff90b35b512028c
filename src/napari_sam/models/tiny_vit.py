"""MobileSAM's TinyViT image encoder (``vit_t``), with MobileSAM's module and parameter names;
LiteMedSAM's variant with ``stem="pointwise"``.

Layout for a 1024 input: conv stem (/4, 256x256x64) -> MBConv stage (64) -> patch merging (/2)
-> TinyViT stages 128 (128x128) -> 160 (64x64) -> 320 (64x64, the last merge keeps the resolution)
-> neck 320 -> 256 (64x64). ``norm_head``/``head`` (the ImageNet classifier) are kept, unused,
because ``mobile_sam.pt`` carries them.

LiteMedSAM (``bowang-lab/MedSAM``, ``tiny_vit_sam.py``) keeps the layers and names but its stem is two
1x1 stride-1 convolutions: a 256 input stays 256x256 through the MBConv stage, then 128, 64, 64, so
its 256 input gives the same 64x64 embedding as MobileSAM's 1024 (at about the same cost). Its
checkpoint has no classifier (``num_classes=0``).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class Conv2d_BN(nn.Sequential):  # noqa: N801 - MobileSAM's name
    """Conv (no bias) + BatchNorm, keys ``c.*`` and ``bn.*``."""

    def __init__(
        self,
        a: int,
        b: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, 1, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: ``(B, 3, S, S) -> (B, C, S/4, S/4)``; with ``stem="pointwise"`` two
    1x1 stride-1 convs (LiteMedSAM): ``(B, 3, S, S) -> (B, C, S, S)``."""

    def __init__(
        self, in_chans: int, embed_dim: int, resolution: int, activation: type[nn.Module], stem: str = "conv"
    ) -> None:
        super().__init__()
        if stem not in ("conv", "pointwise"):
            raise ValueError(f"stem must be 'conv' or 'pointwise', got {stem!r}")
        n = embed_dim
        if stem == "conv":
            self.patches_resolution = (resolution // 4, resolution // 4)
            self.seq = nn.Sequential(
                Conv2d_BN(in_chans, n // 2, 3, 2, 1), activation(), Conv2d_BN(n // 2, n, 3, 2, 1)
            )
        else:
            self.patches_resolution = (resolution, resolution)
            self.seq = nn.Sequential(Conv2d_BN(in_chans, n // 2), activation(), Conv2d_BN(n // 2, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(
        self, in_chans: int, out_chans: int, expand_ratio: float, activation: type[nn.Module]
    ) -> None:
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, ks=1)
        self.act1 = activation()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = activation()
        self.conv3 = Conv2d_BN(hidden, out_chans, ks=1, bn_weight_init=0.0)
        self.act3 = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """``(B, C, H, W)`` or ``(B, H*W, C)`` -> ``(B, H'*W', out_dim)``; stride 2 unless ``stride=1``."""

    def __init__(
        self,
        input_resolution: tuple[int, int],
        dim: int,
        out_dim: int,
        activation: type[nn.Module],
        stride: int = 2,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = activation()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            H, W = self.input_resolution
            x = x.transpose(1, 2).reshape(x.shape[0], -1, H, W)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage of MBConv blocks (+ optional downsample)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        activation: type[nn.Module],
        conv_expand_ratio: float,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, dim, conv_expand_ratio, activation) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Mlp(nn.Module):
    """LayerNorm + two linear layers: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Windowed attention with learned per-head biases indexed by |dy|, |dx| offsets; ``(B, N, C) -> (B, N, C)``.

    ``attention_bias_idxs`` is a non-persistent buffer (as in MobileSAM); a checkpoint that carries it
    anyway (or MobileSAM's cached ``ab``) still loads strictly, the stale copy is dropped.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + self.nh_kd * 2)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in ("attention_bias_idxs", "ab"):
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, d)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.dh))


class TinyViTBlock(nn.Module):
    """Window attention + 3x3 depthwise local conv + MLP on ``(B, H*W, C)`` tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        head_dim = dim // num_heads
        self.attn = Attention(dim, head_dim, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=activation)
        self.local_conv = Conv2d_BN(
            dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        ws = self.window_size
        res_x = x
        if H == ws and W == ws:
            x = self.attn(x)
        else:
            x = x.view(B, H, W, C)
            pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            pH, pW = H + pad_b, W + pad_r
            nH, nW = pH // ws, pW // ws
            x = x.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
            x = self.attn(x)
            x = x.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
            if pad_b or pad_r:
                x = x[:, :H, :W]
            x = x.reshape(B, L, C)
        x = res_x + x
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W))
        x = x.view(B, C, L).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stage of TinyViT blocks (+ optional downsample)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        activation: type[nn.Module],
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size, activation
            )
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: ``forward(x: (B, 3, S, S)) -> (B, 256, S/16, S/16)``
    (``S/4`` with ``stem="pointwise"``, LiteMedSAM's). ``num_classes=0``: no classifier
    (``norm_head``/``head``)."""

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        self.img_size = img_size
        act = nn.GELU
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_size, act, stem)
        res = self.patch_embed.patches_resolution
        n = len(depths)
        self.layers = nn.ModuleList()
        for i in range(n):
            # the last merge (into the last stage) keeps the resolution: /16 overall, not /32
            r = (res[0] // 2 ** min(i, n - 2), res[1] // 2 ** min(i, n - 2))
            down = None
            if i < n - 1:
                down = PatchMerging(r, embed_dims[i], embed_dims[i + 1], act, stride=1 if i == n - 2 else 2)
            if i == 0:
                layer = ConvLayer(embed_dims[0], depths[0], act, mbconv_expand_ratio, down)
            else:
                layer = BasicLayer(
                    embed_dims[i],
                    r,
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    act,
                    down,
                )
            self.layers.append(layer)
        self.out_resolution = (res[0] // 2 ** (n - 2), res[1] // 2 ** (n - 2))
        if num_classes > 0:  # unused by SAM; kept because mobile_sam.pt carries it
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        h, w = self.out_resolution
        return self.neck(x.transpose(1, 2).reshape(B, C, h, w))
