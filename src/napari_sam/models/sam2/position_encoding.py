"""Position encodings of SAM 2: the 2-D sine encoding of feature maps (FPN neck, memory encoder),
the 1-D sine encoding of frame distances (object pointers), and the axial rotary encoding (RoPE)
of the memory attention. Shaped like ``sam2/modeling/position_encoding.py``."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """The sine/cosine encoding of a ``(B, C, H, W)`` map's pixel positions (normalised to
    ``(0, scale]``): ``(B, num_pos_feats, H, W)``, y features first. Computed once per grid size."""

    def __init__(
        self, num_pos_feats: int, temperature: int = 10000, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def _pe(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``(num_pos_feats * 2, h, w)``, float32."""
        key = (h, w)
        if key not in self._cache:
            y = torch.arange(1, h + 1, dtype=torch.float32).view(-1, 1).expand(h, w)
            x = torch.arange(1, w + 1, dtype=torch.float32).view(1, -1).expand(h, w)
            if self.normalize:
                eps = 1e-6
                y = y / (h + eps) * self.scale
                x = x / (w + eps) * self.scale
            dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
            dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
            pos_x = x[:, :, None] / dim_t
            pos_y = y[:, :, None] / dim_t
            pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
            pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
            self._cache[key] = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()
        return self._cache[key].to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> ``(B, 2 * (num_pos_feats // 2), H, W)`` (float32, on ``x``'s device)."""
        pe = self._pe(x.shape[-2], x.shape[-1], x.device)
        return pe[None].expand(x.shape[0], -1, -1, -1)


def get_1d_sine_pe(pos_inds: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """``pos_inds (...)`` -> ``(..., dim)``: sines then cosines (the temporal encoding of object pointers)."""
    pe_dim = dim // 2
    dim_t = torch.arange(pe_dim, dtype=torch.float32, device=pos_inds.device)
    dim_t = temperature ** (2 * (dim_t // 2) / pe_dim)
    pos_embed = pos_inds.unsqueeze(-1) / dim_t
    return torch.cat([pos_embed.sin(), pos_embed.cos()], dim=-1)


def compute_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """The axial RoPE rotations of an ``end_y x end_x`` grid (row-major): complex ``(end_x * end_y, dim // 2)``,
    the x half first."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    freqs_x = torch.outer(t_x, freqs)
    freqs_y = torch.outer(t_y, freqs)
    cis_x = torch.polar(torch.ones_like(freqs_x), freqs_x)
    cis_y = torch.polar(torch.ones_like(freqs_y), freqs_y)
    return torch.cat([cis_x, cis_y], dim=-1)


def apply_rotary_enc(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor, repeat_freqs_k: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries ``(B, heads, N, D)`` and keys ``(B, heads, M, D)`` by ``freqs_cis (N, D // 2)``;
    with ``repeat_freqs_k`` the keys are ``M = r * N`` tokens (r frames of the same grid), each frame
    rotated alike. Keys with ``M == 0`` are returned as they are."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    shape = [1] * (xq_.ndim - 2) + list(freqs_cis.shape)
    if tuple(freqs_cis.shape) != tuple(xq_.shape[-2:]):
        raise ValueError(f"RoPE table {tuple(freqs_cis.shape)} does not fit queries {tuple(xq_.shape[-2:])}")
    freqs_cis = freqs_cis.view(*shape)
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3).type_as(xq)
    if xk.shape[-2] == 0:
        return xq_out, xk
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    if repeat_freqs_k:
        r = xk_.shape[-2] // xq_.shape[-2]
        # (expand + flatten: repeat of complex tensors is not supported on every device)
        freqs_cis = freqs_cis.unsqueeze(2).expand(-1, -1, r, -1, -1).flatten(2, 3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3).type_as(xk)
    return xq_out, xk_out
