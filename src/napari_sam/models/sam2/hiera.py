"""Hiera, SAM 2's hierarchical image trunk (``sam2/modeling/backbones/hieradet.py`` with the window
helpers and patch embedding of ``backbones/utils.py``): windowed multi-scale attention blocks in four
stages, each stage halving the resolution (max-pooled queries) and doubling the width.

Same modules, parameters and arithmetic as Meta's; two changes for speed, neither visible in the
state dict:

* a windowed block (every block but the few global ones) is evaluated in horizontal bands of whole
  windows (:meth:`MultiScaleBlock.forward`): windows never mix, so each band goes through the
  block's exact computation on its own, its temporaries (qkv, attention, the 4x MLP hidden) stay
  small and cache-hot instead of being page-faulted in as hundreds of megabytes at the first,
  1024x1024 stage;
* the windowed absolute position embedding (a bicubic interpolation plus a tiled window table) is
  cached per input size while the weights are unchanged (:meth:`Hiera._get_pos_embed`).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.models.mask_decoder import MLP

# Tokens (over the batch) a windowed block handles at once: large enough for efficient matrix
# products, small enough for its temporaries to stay in cache (measured on CPUs; see the module doc).
BAND_TOKENS = 4096


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x (B, H, W, C)`` -> windows ``(B * nW, window_size, window_size, C)`` (zero-padded to whole
    windows) and the padded size ``(Hp, Wp)``."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws, ws, C)`` -> ``(B, H, W, C)`` (padding removed)."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.reshape(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :]
    return x


class PatchEmbed(nn.Module):
    """Image to patch embedding: ``(B, in_chans, H, W)`` -> ``(B, H/4, W/4, embed_dim)`` (channels last)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def do_pool(x: torch.Tensor, pool: nn.Module | None, norm: nn.Module | None = None) -> torch.Tensor:
    """``pool`` (a channels-first module) applied to ``x (B, H, W, C)``: ``(B, H', W', C)``."""
    if pool is None:
        return x
    x = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return norm(x) if norm else x


class DropPath(nn.Module):
    """Stochastic depth (training only): drops whole samples of a residual branch."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask / keep_prob if self.scale_by_keep and keep_prob > 0.0 else x * mask


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention of ``(B, H, W, dim)`` tokens (B: images or windows), queries
    optionally pooled by ``q_pool``: ``(B, H', W', dim_out)``."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1)  # (B, HW, 3, heads, C)
        q, k, v = torch.unbind(qkv, 2)
        if self.q_pool:  # (downsampling at a stage change)
            q = do_pool(q.reshape(B, H, W, -1), self.q_pool)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, H, W, -1))


class MultiScaleBlock(nn.Module):
    """A Hiera block: (windowed) attention with optional query pooling, then an MLP, both residual.
    ``(B, H, W, dim)`` -> ``(B, H', W', dim_out)`` (``H' = H / q_stride`` when pooling)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] | str = "LayerNorm",
        q_stride: tuple[int, int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(norm_layer, str):
            norm_layer = partial(getattr(nn, norm_layer), eps=1e-6)
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = norm_layer(dim)
        self.window_size = window_size
        self.pool, self.q_stride = None, q_stride
        if self.q_stride:
            self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, H, W, dim)``. A windowed block runs band by band (whole rows of windows, about
        :data:`BAND_TOKENS` tokens each); the result is the same as at once, windows being independent."""
        B, H, W, _ = x.shape
        ws = self.window_size
        if ws == 0 or (self.training and isinstance(self.drop_path, DropPath)):
            return self._forward(x)  # (global attention; per-sample drop masks need the whole batch)
        rows = ws * max(1, BAND_TOKENS // (B * ws * W))
        if rows >= H:
            return self._forward(x)
        return torch.cat([self._forward(x[:, r : r + rows]) for r in range(0, H, rows)], dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Meta's ``MultiScaleBlock.forward``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = do_pool(self.proj(x), self.pool)
        window_size = self.window_size
        if window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, window_size)
        x = self.attn(x)
        if self.q_stride:  # (pooled: the windows shrank)
            window_size = self.window_size // self.q_stride[0]
            H, W = shortcut.shape[1:3]
            pad_h = (window_size - H % window_size) % window_size
            pad_w = (window_size - W % window_size) % window_size
            pad_hw = (H + pad_h, W + pad_w)
        if self.window_size > 0:
            x = window_unpartition(x, window_size, pad_hw, (H, W))
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """Hiera (https://arxiv.org/abs/2306.00989) as SAM 2 uses it: ``(B, 3, H, W)`` -> the last block
    of each stage, ``(B, C_i, H / 2**(i+2), W / 2**(i+2))``, finest first (all four stages with
    ``return_interm_layers``, else the last only). ``channel_list``: their widths, coarsest first."""

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,  # number of q_pool stages
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),  # blocks per stage
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),  # window size per stage (unless global)
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        assert len(stages) == len(window_spec)
        self.window_spec = window_spec
        depth = sum(stages)
        self.q_stride = q_stride
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        assert 0 <= q_pool <= len(self.stage_ends[:-1])
        self.q_pool_blocks = [x + 1 for x in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.global_att_blocks = global_att_blocks

        # Windowed positional embedding (https://arxiv.org/abs/2311.05613)
        self.window_pos_embed_bkg_spatial_size = window_pos_embed_bkg_spatial_size
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )
        self._pos_cache: dict[tuple, torch.Tensor] = {}

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth decay rule
        cur_stage = 1
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # lags by a block: a stage's first block uses the previous stage's window size
            window_size = self.window_spec[cur_stage - 1]
            if self.global_att_blocks is not None:
                window_size = 0 if i in self.global_att_blocks else window_size
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
            block = MultiScaleBlock(
                dim=embed_dim,
                dim_out=dim_out,
                num_heads=num_heads,
                drop_path=dpr[i],
                q_stride=self.q_stride if i in self.q_pool_blocks else None,
                window_size=window_size,
            )
            embed_dim = dim_out
            self.blocks.append(block)
        self.channel_list = (
            [self.blocks[i].dim_out for i in self.stage_ends[::-1]]
            if return_interm_layers
            else [self.blocks[-1].dim_out]
        )

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """``(1, h, w, C)``: the background table interpolated to ``hw`` plus the tiled window table.
        Cached per size outside autograd, until a weight changes."""
        tables = (self.pos_embed, self.pos_embed_window)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tables):
            return self._compute_pos_embed(hw)
        key = (tuple(hw),) + tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tables)
        if key not in self._pos_cache:
            self._pos_cache.clear()
            with torch.no_grad():
                self._pos_cache[key] = self._compute_pos_embed(hw)
        return self._pos_cache[key]

    def _compute_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        window_embed = self.pos_embed_window
        pos_embed = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos_embed = pos_embed + window_embed.tile(
            [x // y for x, y in zip(pos_embed.shape, window_embed.shape, strict=True)]
        )
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x (B, 3, H, W)`` -> per returned stage ``(B, C_i, H_i, W_i)`` (channels-last views)."""
        x = self.patch_embed(x)  # (B, H, W, C)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if (i == self.stage_ends[-1]) or (i in self.stage_ends and self.return_interm_layers):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def get_layer_id(self, layer_name: str) -> int:
        num_layers = self.get_num_layers()
        if layer_name.find("rel_pos") != -1:
            return num_layers + 1
        if layer_name.find("pos_embed") != -1 or layer_name.find("patch_embed") != -1:
            return 0
        if layer_name.find("blocks") != -1:
            return int(layer_name.split("blocks")[1].split(".")[1]) + 1
        return num_layers + 1

    def get_num_layers(self) -> int:
        return len(self.blocks)
