"""SAM's ViT image encoder (ViT-B/L/H): windowed attention, global blocks, decomposed relative positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, act_inplace


class ImageEncoderViT(nn.Module):
    """``forward(x: (B, 3, S, S)) -> (B, out_chans, S/patch, S/patch)``; ``S == img_size``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = (img_size // patch_size, img_size // patch_size)
        norm = norm_layer or (lambda d: nn.LayerNorm(d, eps=1e-6))

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, 3, H, W) -> (B, H/p, W/p, C)`` (channels last)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a permuted view would pass its strides on through every residual sum, and
        # each LayerNorm and linear layer would copy it again
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class Block(nn.Module):
    """Pre-norm transformer block; window attention when ``window_size > 0``, global otherwise."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_layer,
        act_layer: type[nn.Module],
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, H, W, C) -> (B, H, W, C)``."""
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._forward_in_bands(x)
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, pad_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _forward_in_bands(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on a CPU, same arithmetic as :meth:`forward` a few grid rows at a time.

        Windowed attention runs one band of windows at a time, and the MLP a few hundred tokens at a
        time: every intermediate stays a few MB (on this CPU a fresh tensor over 32 MB is mapped
        from the OS and page-faulted in at each call, and the MLP's hidden layer is 50 MB for
        ViT-B at 1024), and the window padding never goes through the linear layers.
        """
        B, H, W, C = x.shape
        ws = self.window_size
        if ws > 0:
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            for i in range(0, H, ws):
                band = x[:, i : i + ws]
                torch.add(band, self.attn.windowed(self.norm1(band), ws), out=out[:, i : i + ws])
        else:
            out = x + self.attn(self.norm1(x))
        mlp = self.mlp
        rows = max(1, _MLP_TOKENS // (B * W))
        for i in range(0, H, rows):
            band = out[:, i : i + rows]
            # GELU in place: the hidden layer is the largest tensor of the block
            band += mlp.lin2(act_inplace(mlp.act, mlp.lin1(self.norm2(band))))
        return out


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative position bias, via ``scaled_dot_product_attention``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required with relative positions")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, H, W, C) -> (B, H, W, C)``."""
        B, H, W, C = x.shape
        # (3, B, heads, H*W, head_dim), views
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.use_rel_pos and x.device.type == "cpu" and H * W * H * W > _MASK_CHUNK:
            # one copy makes each head's rows contiguous for the many per-head products
            q, k, v = qkv.contiguous().unbind(0)
            out = q.new_empty(B, H * W, self.num_heads, C // self.num_heads)
            self._chunked_rel_pos_attention(q, k, v, (H, W), out)
            return self.proj(out.view(B, H, W, C))
        q, k, v = qkv.unbind(0)
        mask = None
        if self.use_rel_pos:
            mask = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, H, W, C))

    def windowed(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        """Window attention over one band of grid rows: ``x (B, r, W, C)``, ``r <= ws``, already
        normalised -> ``(B, r, W, C)``, the same as the official zero-padding to ``ws`` x ``ws``
        windows, without padding the linear layers' input.

        A zero-padded token's query, key and value are the qkv bias: padded keys and values take
        part in the real tokens' attention (as in the official), padded queries are dropped.
        """
        B, r, W, C = x.shape
        nh = self.num_heads
        nw = -(-W // ws)
        qkv = self.qkv(x)
        win = qkv.new_empty(B, nw, ws, ws, 3 * C)
        pad = self.qkv.bias if self.qkv.bias is not None else 0.0
        for j in range(nw):
            w = min(ws, W - j * ws)
            win[:, j, :r, :w] = qkv[:, :, j * ws : j * ws + w]
            if r < ws:
                win[:, j, r:] = pad
            if w < ws:
                win[:, j, :r, w:] = pad
        # (3, B * nw, heads, ws * ws, head_dim), views only
        q, k, v = win.view(B * nw, ws * ws, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if self.use_rel_pos:
            mask = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (ws, ws), (ws, ws))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        # (B, nw, heads, ws, ws, d) -> real tokens of (B, r, W, heads, d)
        o = o.view(B, nw, nh, ws, ws, -1).permute(0, 1, 3, 4, 2, 5)
        out = o.new_empty(B, r, W, nh, C // nh)
        for j in range(nw):
            w = min(ws, W - j * ws)
            out[:, :, j * ws : j * ws + w] = o[:, j, :r, :w]
        return self.proj(out.view(B, r, W, C))

    def _chunked_rel_pos_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int], out: torch.Tensor
    ) -> None:
        """Global attention with the relative-position mask built one head and a few query rows at a
        time: ``q, k, v (B, heads, H*W, d)``, written into ``out (B, H*W, heads, d)``.

        The whole mask of a 64x64 grid is heads x 4096 x 4096 floats (805 MB for ViT-B); written once
        and read once it costs as much as the attention itself. Built per (head, row block) it stays in
        cache. Same arithmetic per query as the full mask. CPU only: on a GPU the many small
        products starve the device (ViT-B fp32 on an H100: 211 ms chunked vs 46 ms official).
        """
        H, W = size
        B, nh, L, _ = q.shape
        rel_h, rel_w = rel_pos_factors(q, self.rel_pos_h, self.rel_pos_w, size, size)
        rows = max(1, _MASK_CHUNK // (B * W * L))
        for n in range(nh):
            kn, vn = k[:, n : n + 1], v[:, n : n + 1]
            for i in range(0, H, rows):
                r = min(rows, H - i)
                sl = slice(i * W, (i + r) * W)
                mask = rel_h[:, n, i : i + r, :, :, None] + rel_w[:, n, i : i + r, :, None, :]
                out[:, sl, n] = F.scaled_dot_product_attention(
                    q[:, n : n + 1, sl], kn, vn, attn_mask=mask.view(B, 1, r * W, L), scale=self.scale
                )[:, 0]


# attention-mask elements built at a time (8 MiB of float32): larger masks are built in chunks
_MASK_CHUNK = 2**21
# tokens per MLP chunk in CPU inference (ViT-B: a 25 MB hidden layer, under glibc's 32 MB mmap threshold)
_MLP_TOKENS = 2048


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C) -> (B * nWindows, ws, ws, C)``, zero-padding to a multiple of ``ws``; returns padded (Hp, Wp)."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nWindows, ws, ws, C) -> (B, H, W, C)``."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings ``(L, C)`` -> per (query, key) pair ``(q_size, k_size, C)``.

    The table is linearly interpolated when its length does not match ``2 * max(q, k) - 1``.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = rel_pos.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def rel_pos_factors(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the decomposed bias: ``q (B, heads, q_h * q_w, C)`` ->
    ``rel_h (B, heads, q_h, q_w, k_h)`` and ``rel_w (B, heads, q_h, q_w, k_w)`` (contiguous)."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    B, nh, _, dim = q.shape
    r_q = q.reshape(B, nh, q_h, q_w, dim)
    # contiguous factors make the broadcast sum of rel_pos_bias write a contiguous mask, which the
    # reshape then views (einsum's output strides would otherwise make it a second full copy)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).contiguous()
    return rel_h, rel_w


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Decomposed relative position bias (MViTv2) as an additive attention mask.

    ``q: (B, heads, q_h * q_w, C)`` (unscaled) -> ``(B, heads, q_h * q_w, k_h * k_w)``.
    """
    rel_h, rel_w = rel_pos_factors(q, rel_pos_h, rel_pos_w, q_size, k_size)
    B, nh = q.shape[:2]
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, q_h * q_w, k_h * k_w)
