"""Cheaper, exact evaluation of the mask decoder's cross-attentions between a few prompt tokens and
many image tokens.

In SAM's decoder, ``Nt`` prompt tokens (5 output tokens + the prompts, typically < 12) attend to
``L = h*w`` image tokens (4096) and back. The official code projects all L image tokens to the
attention width ``D`` (q/k/v projections, ``L*C*D`` multiply-adds each) and projects the L outputs
back. Multi-head attention is linear in those projections, so the products can be reassociated to
run through the small side instead:

- tokens -> image: ``softmax(q_h (X Wk_h^T + bk_h)^T) (X Wv_h^T + bv_h)`` equals
  ``softmax((q_h Wk_h) X^T) (P X) Wv_h^T + bv_h`` (the key bias adds a per-query constant, which the
  softmax ignores; attention rows sum to one, so the value bias passes through),
- image -> tokens: the query projection folds into the keys (``X (Wq_h^T K_h^T) + bq_h K_h^T``) and the
  output projection into the values (``sum_h P_h (V_h Wo_h^T)``),

costing ``L*C*heads*Nt`` instead of ``L*C*D``: about half when ``heads*Nt`` is well below ``D``.
Results equal the plain computation up to float rounding (parity tests hold them to 1e-4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..transformer import Attention


def worth_it(attn: Attention, n_small: int, n_large: int) -> bool:
    """Whether reassociating through ``n_small`` tokens saves work against ``n_large`` image tokens."""
    return n_large >= 8 * n_small and 4 * attn.num_heads * n_small <= 3 * attn.internal_dim


def tokens_to_image(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``q (B, Nt, C)`` prompt tokens attend to ``k, v (B, L, C)`` image tokens -> ``(B, Nt, C)``.

    Each head's scaled queries go through its key projection, ``a (B, heads*Nt, C)``: a query's
    score against image token ``x`` is then a dot product with ``x``, up to the key bias that the
    softmax ignores."""
    h = attn.num_heads
    b, nt, c = q.shape
    qh = token_heads(attn, attn.q_proj, q)  # (h, B*Nt, d)
    a = (qh.view(h, b, nt, -1).transpose(0, 1) @ attn.k_proj.weight.reshape(h, -1, c)).reshape(b, h * nt, c)
    p = (a @ k.transpose(1, 2)).softmax(-1)  # (B, h*Nt, L); k, v have batch B (or B == 1)
    return _value_heads_out(attn, p @ v)


def _value_heads_out(attn: Attention, px: Tensor) -> Tensor:
    """``px (B, heads*Nt, C)``: per head, the attention weights times the image tokens ->
    through each head's value projection and the output projection -> ``(B, Nt, C)``."""
    h, dim = attn.num_heads, attn.internal_dim
    d = dim // h
    b, rows, c = px.shape
    px = px.reshape(b, h, rows // h, c)
    out = px @ attn.v_proj.weight.reshape(h, d, c).transpose(1, 2) + attn.v_proj.bias.reshape(h, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(b, rows // h, dim))


def image_to_tokens(
    attn: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    residual: Tensor | None = None,
) -> Tensor:
    """``q (B | 1, L, C)`` image tokens attend to ``k, v (B, Nt, C)`` prompt tokens -> ``(B, L, C)``,
    plus ``residual`` (``(1 | B, L, C)``) when given: it is the output product's accumulator, so
    the sum takes no pass of its own."""
    h, dim = attn.num_heads, attn.internal_dim
    d = dim // h
    b, nt, c = k.shape
    L = q.shape[1]
    kh = attn.k_proj(k).reshape(b, nt, h, d).transpose(1, 2) * d**-0.5  # (B, h, Nt, d)
    m = (kh @ attn.q_proj.weight.reshape(h, d, c)).reshape(b, h * nt, c)  # (B, h*Nt, C)
    const = (kh @ attn.q_proj.bias.reshape(h, d, 1)).reshape(b, h * nt, 1)
    if q.shape[0] == 1 and b > 1:
        scores = (m.reshape(b * h * nt, c) @ q[0].T).reshape(b, h * nt, L)
    else:
        scores = m @ q.transpose(1, 2)  # (B, h*Nt, L)
    # softmax over the few keys, laid out along a strided axis (a short last axis is slow on CPU)
    p = (scores + const).reshape(b, h, nt, L).softmax(dim=-2).reshape(b, h * nt, L)
    return _weighted_values(attn, p.transpose(1, 2), v, residual)


def tokens_to_projected(
    attn: Attention, q: Tensor, kp: Tensor, vp: Tensor, update: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Prompt tokens ``q (B, Nt, C)`` attend to image tokens whose key/value projections are given:
    ``kp, vp (1, L, D)`` (``attn.k_proj``/``attn.v_proj`` of the shared image, bias included) ->
    ``(B, Nt, C)``. The batch-1 image is never copied: heads are the bmm batch, prompts its rows.

    ``update = (z (B, L, r), m (r, C))``: each prompt's image tokens are those of ``kp``/``vp``
    plus its ``z @ m`` (a mask prompt, :meth:`PromptEncoder.mask_update`); their projections pass
    through the rank-r side (``L*r`` per row instead of new ``L x D`` projections)."""
    h, dim = attn.num_heads, attn.internal_dim
    d = dim // h
    b, nt, _ = q.shape
    L = kp.shape[1]
    qh = token_heads(attn, attn.q_proj, q)  # (h, B*Nt, d)
    kh = kp.reshape(L, h, d).transpose(0, 1)  # (h, L, d) views
    vh = vp.reshape(L, h, d).transpose(0, 1)
    scores = qh @ kh.transpose(1, 2)  # (h, B*Nt, L)
    if update is not None:
        z, m = update
        add_low_rank(scores, qh @ _per_head(m @ attn.k_proj.weight.T, h).transpose(1, 2), z, b)
    p = scores.softmax(-1)
    out = p @ vh  # (h, B*Nt, d)
    if update is not None:
        out += times_low_rank(p, z, b) @ _per_head(m @ attn.v_proj.weight.T, h)
    return attn.out_proj(out.transpose(0, 1).reshape(b, nt, dim))


def token_heads(attn: Attention, proj: nn.Linear, x: Tensor) -> Tensor:
    """``proj`` of prompt tokens ``x (B, Nt, C)`` per head, scaled by ``d**-0.5`` -> ``(heads,
    B*Nt, d)`` (rows prompt-major)."""
    h = attn.num_heads
    d = attn.internal_dim // h
    return proj(x).reshape(-1, h, d).transpose(0, 1) * d**-0.5


def heads_along_tokens(x: Tensor, heads: int) -> Tensor:
    """Projected image tokens ``(L, D)`` -> ``(heads, D/heads, L)``, contiguous: per head, the
    long token axis is the contiguous one of the products with a few prompt tokens."""
    return x.reshape(x.shape[0], heads, -1).permute(1, 2, 0).contiguous()


def _per_head(x: Tensor, h: int) -> Tensor:
    """``(r, D)`` -> ``(heads, r, D/heads)``."""
    return x.reshape(x.shape[0], h, -1).transpose(0, 1)


def add_low_rank(scores: Tensor, g: Tensor, z: Tensor, b: int) -> None:
    """``scores (h, B*Nt, L) += g (h, B*Nt, r) @ z_b^T`` per prompt b, ``z (B, L, r)``, in place."""
    h, rows, L = scores.shape
    if b == 1:
        scores.view(h * rows, L).addmm_(g.reshape(h * rows, -1), z[0].T)
        return
    nt = rows // b
    g = g.reshape(h, b, nt, -1).transpose(0, 1).reshape(b, h * nt, -1)
    scores.view(h, b, nt, L).add_(torch.bmm(g, z.transpose(1, 2)).view(b, h, nt, L).transpose(0, 1))


def times_low_rank(p: Tensor, z: Tensor, b: int) -> Tensor:
    """``p (h, B*Nt, L) @ z_b`` per prompt b, ``z (B, L, r)`` -> ``(h, B*Nt, r)``."""
    h, rows, L = p.shape
    if b == 1:
        return (p.reshape(h * rows, L) @ z[0]).view(h, rows, -1)
    nt = rows // b
    pz = torch.bmm(p.reshape(h, b, nt, L).transpose(0, 1).reshape(b, h * nt, L), z)  # (B, h*Nt, r)
    return pz.view(b, h, nt, -1).transpose(0, 1).reshape(h, rows, -1)


def projected_to_tokens(
    attn: Attention,
    qpt: Tensor,
    k: Tensor,
    v: Tensor,
    residual: Tensor | None = None,
    record: list | None = None,
    update: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Image tokens whose query projection is given, ``qpt (heads, D/heads, L)`` (``attn.q_proj`` of
    the shared image, per head and transposed), attend to prompt tokens ``k, v (B, Nt, C)`` ->
    ``(B, L, C)``; the output projection is folded into the values as in :func:`image_to_tokens`;
    ``residual`` as there; ``record`` gets the output product's factors (:func:`_weighted_values`).
    ``update = (z (B, L, r), m (r, C))``: each prompt's image tokens (queries and ``residual``) are
    those of ``qpt``/``residual`` plus its ``z @ m``, as in :func:`tokens_to_projected`; the
    residual's part joins the output product (``record`` gets the joined factors)."""
    b = k.shape[0]
    kh = token_heads(attn, attn.k_proj, k)  # (h, B*Nt, d)
    scores = kh @ qpt
    if update is not None:
        z, m = update
        add_low_rank(scores, kh @ _per_head(m @ attn.q_proj.weight.T, attn.num_heads).transpose(1, 2), z, b)
    return attend_to_tokens(attn, scores, v, residual, record, update)


def attend_to_tokens(
    attn: Attention,
    scores: Tensor,
    v: Tensor,
    residual: Tensor | None = None,
    record: list | None = None,
    update: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Image tokens attend to prompt tokens ``v (B, Nt, C)`` with the scores ``(heads, B*Nt, L)``
    (rows prompt-major) -> ``(B, L, C)``; the rest as in :func:`projected_to_tokens`.

    L is the long, contiguous axis of the scores and of the softmax, which runs over each
    prompt's Nt keys along a strided axis (a short last axis is slow on CPU)."""
    h, rows, L = scores.shape
    b = v.shape[0]
    p = scores.view(h, b, rows // b, L).softmax(dim=2).transpose(0, 1)  # (B, h, Nt, L)
    return _weighted_values(attn, p.reshape(b, rows // b * h, L).transpose(1, 2), v, residual, record, update)


def _weighted_values(
    attn: Attention,
    p: Tensor,
    v: Tensor,
    residual: Tensor | None,
    record: list | None = None,
    update: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Attention weights ``p (B, L, heads*Nt)`` times the prompt tokens' values ``v (B, Nt, C)``
    with the output projection folded in -> ``(B, L, C_out)`` (+ ``residual``).
    The attention output is exactly ``p @ n``; ``record`` (a list) gets ``(p, n)``, ``n (B,
    heads*Nt, C_out)`` (read by the second layer, :mod:`.update_projection`).
    ``update = (z (B, L, r), m (r, C_out))`` is added too, as more columns of ``p`` and rows of
    ``n`` (the recorded factors include it)."""
    h, d = attn.num_heads, attn.internal_dim // attn.num_heads
    b, nt = v.shape[:2]
    vh = attn.v_proj(v).reshape(b, nt, h, d).transpose(1, 2)  # (B, h, Nt, d)
    n = _with_bias(vh @ attn.out_proj.weight.reshape(-1, h, d).permute(1, 2, 0), attn).reshape(b, h * nt, -1)
    if update is not None:  # joined along p's contiguous axis: p is a transposed (B, K, L) view
        z, m = update
        p = torch.cat([p.transpose(1, 2), z.transpose(1, 2).expand(b, -1, -1)], dim=1).transpose(1, 2)
        n = torch.cat([n, m.expand(b, -1, -1)], dim=1)
    if record is not None:
        record.append((p, n))
    return p @ n if residual is None else torch.baddbmm(residual, p, n)


def _with_bias(n: Tensor, attn: Attention) -> Tensor:
    """Folds the output bias into the per-(head, token) values ``n (B, h, Nt, C)``: each head's
    attention weights sum to one, so adding ``bias / heads`` to every value adds ``bias`` to every
    output row, without a pass over the (B, L, C) output."""
    return n + attn.out_proj.bias / attn.num_heads
