"""The second two-way layer's attentions on the image tokens, evaluated through the first layer's
low-rank update of the image instead of on its output tokens: exact, with about a third of the
multiply-adds per prompt.

The first layer leaves ``x = LN(src + p @ n)`` (:class:`ImageUpdate`: ``p (L, K)``
attention weights, ``n (K, C)``, the LayerNorm's per-token ``mean``/``rstd``; ``src`` the image's
own tokens). LayerNorm is affine per token once its statistics are known, so a linear map of the
tokens (an attention projection ``W (D, C)``, ``b``; ``g``, ``beta`` the LayerNorm's weight and
bias) distributes down to ``src``::

    (x [+ pe]) W^T + b = rstd * (src @ Wg^T + p @ (n @ Wg^T) - mean u^T) + e,
    Wg = W diag(g),  u = W g,  e = (beta [+ pe]) W^T + b

``src @ Wg^T`` and ``e`` belong to the image (:func:`prepare`, once). Per prompt, the second
layer's token-to-image scores ``q_h proj_h(x + pe)^T`` then cost ``L * heads * Nt * (2 d + K)``
multiply-adds (per head ``d = D/heads``) instead of ``L * heads * Nt * C`` through the materialised
tokens (:mod:`.asymmetric_attention`), its weighted values ``P_h proj_h(x)`` likewise, and the
image-to-token scores too. For SAM's click (``heads*Nt = K = 56``, ``d = 16``, ``C = 256``): 20 M
instead of 59 M multiply-adds for each of the three products. Results equal the direct
computation up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .asymmetric_attention import (
    add_low_rank,
    attend_to_tokens,
    heads_along_tokens,
    times_low_rank,
    token_heads,
)

if TYPE_CHECKING:
    from ..transformer import Attention


@dataclass
class ImageUpdate:
    """What one two-way layer did to the image tokens: ``x_out = LayerNorm(x_in + p @ n)``.

    ``p (B, L, K)`` image-to-token attention weights (heads x prompt tokens, K = heads * Nt),
    ``n (B, K, C)`` the prompt tokens' values with the output projection and its bias folded in,
    ``mean``/``rstd`` ``(B, L, 1)`` the LayerNorm's statistics of ``x_in + p @ n``.
    """

    p: Tensor
    n: Tensor
    mean: Tensor
    rstd: Tensor



@dataclass
class UpdatedMap:
    """A linear map ``W (D, C)``, ``b`` of the updated image tokens, prepared for one image.

    ``a``: ``src @ Wg^T`` per head, ``(heads, d, L)`` (``keys=True``: for scores) or ``(heads, L,
    d)`` (for weighted values); ``e``: ``(beta + pe) W^T + b`` laid out as ``a`` (with a positional
    encoding) or ``(heads, 1, d)`` (without: the same for every token); ``wg (D, C)``: ``W diag(g)``;
    ``u (heads, 1, d)``: ``W g``.
    """

    a: Tensor
    e: Tensor
    wg: Tensor
    u: Tensor


@dataclass
class PreparedLayer:
    """The second two-way layer's image-token projections for one image: token-to-image keys
    (with the positional encoding) and values, image-to-token queries (with it)."""

    t2i_k: UpdatedMap
    t2i_v: UpdatedMap
    i2t_q: UpdatedMap


def prepare_layer(
    layer: nn.Module, norm: nn.LayerNorm, src: Tensor, pe: Tensor, consts: tuple[Tensor, Tensor] | None = None
) -> PreparedLayer:
    """``layer``: a :class:`~.transformer.TwoWayAttentionBlock` after the first; ``norm``: the
    first layer's image-token LayerNorm; ``src``, ``pe`` ``(1, L, C)``: the first layer's input
    image tokens and their positional encoding; ``consts``: :func:`layer_constants` of ``pe``,
    when already known."""
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    heads = t2i.num_heads
    e_k, e_q = layer_constants(layer, norm, pe) if consts is None else consts
    return PreparedLayer(
        prepare(t2i.k_proj, norm, src, pe, heads, keys=True, e=e_k),
        prepare(t2i.v_proj, norm, src, None, heads, keys=False),
        prepare(i2t.q_proj, norm, src, pe, i2t.num_heads, keys=True, e=e_q),
    )


def layer_constants(layer: nn.Module, norm: nn.LayerNorm, pe: Tensor) -> tuple[Tensor, Tensor]:
    """The constant parts (:func:`constant_part`) of ``layer``'s token-to-image keys and
    image-to-token queries: they depend on the positional encoding and the weights only."""
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return constant_part(t2i.k_proj, norm, pe, t2i.num_heads), constant_part(i2t.q_proj, norm, pe, i2t.num_heads)


def prepare(
    linear: nn.Linear,
    norm: nn.LayerNorm,
    src: Tensor,
    pe: Tensor | None,
    heads: int,
    keys: bool,
    e: Tensor | None = None,
) -> UpdatedMap:
    """:class:`UpdatedMap` of ``linear`` on ``norm``'s output tokens (+ ``pe (1, L, C)`` when given)
    for the image tokens ``src (1, L, C)`` before the update; ``e``: its constant part, when
    already known."""
    w, g, beta = linear.weight, norm.weight, norm.bias
    wg = w * g
    dim, L = w.shape[0], src.shape[1]
    d = dim // heads

    a = src[0] @ wg.T  # (L, D)
    a = heads_along_tokens(a, heads) if keys else a.reshape(L, heads, d).transpose(0, 1).contiguous()
    if e is None:
        e = constant_part(linear, norm, pe, heads) if pe is not None else (beta @ w.T + linear.bias).reshape(heads, 1, d)
    return UpdatedMap(a, e, wg, (w @ g).reshape(heads, 1, d))


def constant_part(linear: nn.Linear, norm: nn.LayerNorm, pe: Tensor, heads: int) -> Tensor:
    """``(norm.bias + pe) W^T + b`` of ``linear`` per head, ``(heads, d, L)``; ``pe (1, L, C)``."""
    return heads_along_tokens(torch.addmm(norm.bias @ linear.weight.T + linear.bias, pe[0], linear.weight.T), heads)


def worth_it(attn: Attention, update: ImageUpdate) -> bool:
    """Whether going through the update (its K columns, plus the per-head width twice) is well
    below going through the tokens' C channels."""
    return 4 * (update.p.shape[2] + 2 * attn.internal_dim // attn.num_heads) <= 3 * update.n.shape[2]


def tokens_to_updated(attn: Attention, q: Tensor, prep: PreparedLayer, update: ImageUpdate) -> Tensor:
    """Prompt tokens ``q (B, Nt, C)`` attend to each prompt's updated image tokens (keys with the
    positional encoding, values without) -> ``(B, Nt, C)``."""
    b, nt, _ = q.shape
    qh = token_heads(attn, attn.q_proj, q)  # (h, B*Nt, d)
    out = values(scores(qh, prep.t2i_k, update).softmax(-1), prep.t2i_v, update)
    return attn.out_proj(out.transpose(0, 1).reshape(b, nt, attn.internal_dim))


def updated_to_tokens(
    attn: Attention,
    prep: PreparedLayer,
    update: ImageUpdate,
    k: Tensor,
    v: Tensor,
    residual: Tensor,
) -> Tensor:
    """Each prompt's updated image tokens (queries with the positional encoding) attend to its
    prompt tokens ``k, v (B, Nt, C)`` -> ``residual (B, L, C)`` (the updated tokens themselves)
    plus the attention output."""
    kh = token_heads(attn, attn.k_proj, k)  # (h, B*Nt, d)
    return attend_to_tokens(attn, scores(kh, prep.i2t_q, update), v, residual)


def scores(left: Tensor, m: UpdatedMap, update: ImageUpdate) -> Tensor:
    """``left_h @ proj_h^T`` per head for each prompt's updated image tokens -> ``(heads, B*Nt, L)``.

    ``left (heads, B*Nt, d)`` (rows prompt-major); ``m`` a ``keys=True`` map; ``update``: the
    first layer's, ``p (B, L, K)``, ``n (B, K, C)``, ``mean``/``rstd (B, L, 1)``.
    """
    p, n, mean, rstd = update.p, update.n, update.mean, update.rstd
    h, rows, d = left.shape
    b, L, _ = p.shape
    nt = rows // b
    s = left @ m.a  # (h, B*Nt, L): the image's own part
    add_low_rank(s, _per_prompt(left, n @ m.wg.T, b), p, b)  # + (left n Wg^T) p^T
    c = (left * m.u).sum(-1, keepdim=True)  # (h, B*Nt, 1)
    s4 = s.view(h, b, nt, L)
    s4.addcmul_(c.view(h, b, nt, 1), mean.view(1, b, 1, L), value=-1).mul_(rstd.view(1, b, 1, L))
    return s.baddbmm_(left, m.e)  # + the constant part (positional encoding, biases)


def values(weights: Tensor, m: UpdatedMap, update: ImageUpdate) -> Tensor:
    """``weights_h @ proj_h`` per head for each prompt's updated image tokens -> ``(heads, B*Nt, d)``.

    ``weights (heads, B*Nt, L)`` (attention weights: each row sums to one); ``m`` a ``keys=False``
    map without positional encoding; ``update`` as in :func:`scores`."""
    p, n, mean, rstd = update.p, update.n, update.mean, update.rstd
    h, rows, L = weights.shape
    b = p.shape[0]
    r = (weights.view(h, b, rows // b, L) * rstd.view(1, b, 1, L)).view(h, rows, L)
    out = r @ m.a  # (h, B*Nt, d)
    out.add_(_per_prompt_values(times_low_rank(r, p, b), n @ m.wg.T, b))
    out.addcmul_(times_low_rank(r, mean, b), m.u, value=-1)
    return out.add_(m.e)  # rows of weights sum to one: the constant passes through


def _per_prompt(left: Tensor, nw: Tensor, b: int) -> Tensor:
    """``left (h, B*Nt, d)`` times prompt b's ``nw_b (K, h*d)`` per head -> ``(h, B*Nt, K)``."""
    h, rows, d = left.shape
    k = nw.shape[1]
    return torch.einsum("hbtd,bkhd->hbtk", left.view(h, b, rows // b, d), nw.view(b, k, h, d)).reshape(h, rows, k)


def _per_prompt_values(rp: Tensor, nw: Tensor, b: int) -> Tensor:
    """``rp (h, B*Nt, K)`` times prompt b's ``nw_b (K, h*d)`` per head -> ``(h, B*Nt, d)``."""
    h, rows, k = rp.shape
    d = nw.shape[2] // h
    return torch.einsum("hbtk,bkhd->hbtd", rp.view(h, b, rows // b, k), nw.view(b, k, h, d)).reshape(h, rows, d)
