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


def to_tokens(x: torch.Tensor, vector: torch.Tensor | None = None) -> torch.Tensor:
    """``x (B, C, h, w)`` -> a contiguous ``(B, h*w, C)`` (token layout), plus ``vector``
    (broadcastable to ``(B, 1, C)``: one value per channel) when given.

    On a CPU each image goes through ATen's blocked 2-D transpose (about twice as fast as the
    element-wise strided copy that ``flatten(2).transpose(1, 2).contiguous()`` makes of a 3-D
    tensor); adding a per-channel vector to the tokens afterwards is the same single addition per
    element as adding it before, on cache-hot memory."""
    b, c = x.shape[:2]
    if x.device.type != "cpu" or not x.is_contiguous():  # (channels-last: already a token layout)
        t = x.flatten(2).transpose(1, 2)
        return (t if vector is None else t + vector).contiguous()  # never x's storage changed
    out = x.new_empty((b, x.shape[2] * x.shape[3], c))
    for i in range(b):
        out[i].copy_(x[i].view(c, -1).T)
    return out if vector is None else out.add_(vector)


def weights_key(module: nn.Module) -> tuple:
    """Each parameter's storage and version counter: changes when a weight is replaced (a loaded
    state dict, ``.to()``) or updated in place (an optimiser step). For caches of what is computed
    from the weights alone."""
    return tuple((t.data_ptr(), t._version) for t in module.parameters())
