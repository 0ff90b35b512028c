"""The mask decoder's first upscaling deconvolution, evaluated through the two-way layers' low-rank
updates of the image tokens instead of on the final image tokens: exact, with less than half the
multiply-adds per prompt.

The upscaling starts with a linear map of every image token, ``z = x W^T + b`` (``W (O, C)``: the
first ConvTranspose2d as a matrix, O = 4 * C/4). The tokens ``x`` come out of ``d`` two-way
layers, each of which adds a low-rank attention output and applies a LayerNorm::

    y_l = x_(l-1) + p_l @ n_l          x_l = g_l * (y_l - mean_l) * rstd_l + beta_l

with ``x_(-1) = src``, the image tokens of the embedding, the same for every prompt. LayerNorm is
affine per token once its statistics are known, so the linear map distributes through the layers
down to ``src``. With ``G_(d-1) = W^T``, ``H_l = diag(g_l) G_l``, ``G_(l-1) = H_l``, ``u_l`` the
column sums of ``H_l`` and ``R_l = rstd_l * ... * rstd_(d-1)`` (``R_d = 1``)::

    z = R_0 * (src @ H_0) + sum_l [ (R_l * p_l) @ (n_l @ H_l) - (R_l * mean_l) u_l + R_(l+1) (beta_l @ G_l) ] + b

``src @ H_0`` is computed once per image (:func:`prepare`); per prompt the rest is one product of
``L x (d * (heads*Nt + 2))`` by ``(...) x O`` (116 columns for SAM's 7-token click instead of the
256 channels of ``x @ W^T``). Equal to the direct computation up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .transformer import ImageUpdate


@dataclass
class UpscalePrep:
    """The prompt-independent part for one image: ``src_maps (1, L, O)`` = ``src @ H_0``, ``maps``
    the ``H_l (C, O)`` and ``consts`` per layer ``(2, O)``: ``u_l`` and ``beta_l @ G_l`` (+ ``b`` in
    the last layer)."""

    src_maps: Tensor
    maps: list[Tensor]
    consts: list[Tensor]


def prepare(src: Tensor, norms: list[nn.LayerNorm], weight: Tensor, bias: Tensor) -> UpscalePrep:
    """``src (1, L, C)`` image tokens before the two-way layers, ``norms`` the layers' image-token
    LayerNorms (first to last), ``weight (O, C)``, ``bias (O,)`` the first upscaling map."""
    g = weight.T
    maps: list[Tensor] = [g] * len(norms)
    consts: list[Tensor] = [g] * len(norms)
    for i in reversed(range(len(norms))):
        h = norms[i].weight[:, None] * g
        c = norms[i].bias @ g
        maps[i], consts[i] = h, torch.stack([h.sum(0), c + bias if i == len(norms) - 1 else c])
        g = h
    return UpscalePrep(src @ maps[0], maps, consts)


def first_upscale(prep: UpscalePrep, trace: list[ImageUpdate], out: Tensor | None = None) -> Tensor:
    """``z (B, L, O)``: the first upscaling map of the last layer's image tokens, from the layers'
    :class:`ImageUpdate` (first to last) and the image's :class:`UpscalePrep`; written into
    ``out`` when given."""
    d = len(trace)
    b, L = trace[-1].p.shape[:2]
    scale = [trace[-1].rstd]  # R_(d-1), then R_(d-2), ..., R_0
    for t in trace[-2::-1]:
        scale.append(scale[-1] * t.rstd)
    scale = scale[::-1]
    # the left factor, transposed (rows along L, as the attention weights are laid out):
    # per layer [R_l p_l | -R_l mean_l | R_(l+1)]^T
    left = trace[-1].p.new_empty((b, sum(t.p.shape[2] + 2 for t in trace), L))
    right = []
    c = 0
    for i, t in enumerate(trace):
        k = t.p.shape[2]
        torch.mul(t.p.transpose(1, 2), scale[i].transpose(1, 2), out=left[:, c : c + k])
        torch.mul(t.mean, scale[i], out=left[:, c + k, :, None]).neg_()
        if i + 1 < d:
            left[:, c + k + 1] = scale[i + 1][..., 0]
        else:
            left[:, c + k + 1].fill_(1.0)
        c += k + 2
        right += [t.n @ prep.maps[i], prep.consts[i].expand(t.n.shape[0], 2, -1)]
    z = torch.mul(prep.src_maps, scale[0], out=out)
    return z.baddbmm_(left.transpose(1, 2), torch.cat(right, 1))
