"""Building blocks shared by the networks: a channels-first LayerNorm, a transformer MLP, and an
activation applied in place outside autograd."""

from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between: ``(..., C) -> (..., C)``."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)`` tensors (same arithmetic as the official)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def act_inplace(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for (exact) GELU outside autograd: a large fresh buffer fewer."""
    if type(act) is nn.GELU and act.approximate == "none" and not (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.aten.gelu_(x)
    return act(x)
