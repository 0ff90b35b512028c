"""The two-way transformer on the CPU fast path: the plain modules' weights
(:mod:`napari_sam.models.transformer`), computed with the exact reassociations of
:mod:`.asymmetric_attention` and :mod:`.update_projection` and a per-image preparation of the
first layer.

Same numbers as the plain :class:`~napari_sam.models.transformer.TwoWayTransformer` up to float
rounding (``tests/models/test_fast.py``); inference only (no autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..common import to_tokens, weights_key
from ..transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from . import asymmetric_attention, update_projection
from .asymmetric_attention import worth_it
from .update_projection import ImageUpdate


@dataclass
class PreparedImage:
    """The prompt-independent part of the first two-way layer for one image, computed once.

    ``src`` (1, L, C) image tokens (embedding + the no-mask dense prompt), ``pe`` (1, L, C) their
    positional encoding; ``t2i_k``/``t2i_v`` (1, L, D): the first layer's token-to-image key/value
    projections (keys of ``src + pe``); ``i2t_q`` (heads, D/heads, L): its image-to-token query
    projection of ``src + pe``, per head and transposed; ``second``: the second layer's image-token
    projections through the first layer's update (:mod:`.update_projection`; None for a single
    layer); ``size`` the grid (h, w), L = h * w.
    """

    src: Tensor
    pe: Tensor
    t2i_k: Tensor
    t2i_v: Tensor
    i2t_q: Tensor
    size: tuple[int, int]
    second: update_projection.PreparedLayer | None = None


@dataclass
class PositionalParts:
    """What :meth:`TwoWayTransformer.prepare` computes from the positional encoding and the weights
    alone, the same for every image (:meth:`TwoWayTransformer.positional_parts`): ``pe`` (1, L, C)
    the encoding as tokens; ``t2i_k``, ``i2t_q`` (L, D): the first layer's token-to-image key and
    image-to-token query projections of ``pe``, biases included (those of ``src + pe`` are these
    plus ``src``'s, without bias); ``second``: the second layer's
    :func:`.update_projection.layer_constants` (None for a single layer)."""

    pe: Tensor
    t2i_k: Tensor
    i2t_q: Tensor
    second: tuple[Tensor, Tensor] | None


class FastTransformer:
    """CPU inference of ``module`` (a :class:`TwoWayTransformer`): :meth:`prepare` an image once,
    then :meth:`forward` its prompts. Keeps what :meth:`prepare` computes from the positional
    encoding and the weights alone (:meth:`positional_parts`)."""

    def __init__(self, module: TwoWayTransformer) -> None:
        self.module = module
        self._positional_cache: tuple | None = None  # see positional_parts

    @property
    def layers(self) -> nn.ModuleList:
        return self.module.layers

    @property
    def depth(self) -> int:
        return self.module.depth

    def prepare(self, image_embedding: Tensor, image_pe: Tensor) -> PreparedImage:
        """``image_embedding (1, C, h, w)`` (already plus the dense prompt; or as tokens ``(1,
        h*w, C)``), ``image_pe (1, C, h, w)`` -> the :class:`PreparedImage` that :meth:`forward`
        takes instead of them."""
        src = to_tokens(image_embedding) if image_embedding.ndim == 4 else image_embedding
        parts = self.positional_parts(image_pe)
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        size = (int(image_pe.shape[-2]), int(image_pe.shape[-1]))
        # projections of src + pe: src's product accumulated onto pe's (bias included there)
        t2i_k = torch.addmm(parts.t2i_k, src[0], t2i.k_proj.weight.T)[None]
        i2t_q = asymmetric_attention.heads_along_tokens(torch.addmm(parts.i2t_q, src[0], i2t.q_proj.weight.T), i2t.num_heads)
        second = None
        if self.depth > 1:
            second = update_projection.prepare_layer(self.layers[1], first.norm4, src, parts.pe, parts.second)
        return PreparedImage(src, parts.pe, t2i_k, t2i.v_proj(src), i2t_q, size, second)

    def positional_parts(self, image_pe: Tensor) -> PositionalParts:
        """:class:`PositionalParts` of ``image_pe (1, C, h, w)``.

        Outside autograd the last result is kept and returned again for an equal encoding (compared
        by value with the kept token layout) while the weights are unchanged (same storage, no
        in-place update: ``Tensor._version``): 4 of :meth:`prepare`'s 10 products of ``L x C x D``
        (vit_b), ~9 ms of each image's preparation, for ~8 MB kept (vit_b)."""
        key = weights_key(self.module)
        cached = self._positional_cache if not torch.is_grad_enabled() else None
        if cached is not None and cached[0] == key and _same_encoding(cached[1].pe, image_pe):
            return cached[1]
        pe = to_tokens(image_pe)
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        parts = PositionalParts(
            pe,
            t2i.k_proj(pe)[0],
            i2t.q_proj(pe)[0],
            update_projection.layer_constants(self.layers[1], first.norm4, pe) if self.depth > 1 else None,
        )
        if not torch.is_grad_enabled():
            self._positional_cache = (key, parts)
        return parts

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor | None,
        point_embedding: Tensor,
        prepared: PreparedImage | None = None,
        final_tokens: list[int] | None = None,
        dense_update: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: ``(B, C, h, w)`` (or already as tokens ``(B, h*w, C)``); None with
                ``prepared``.
            image_pe: ``(1 | B, C, h, w)`` positional encoding (broadcast over the batch); None with
                ``prepared``.
            point_embedding: ``(B, N, C)`` prompt tokens.
            prepared: a shared image's :meth:`prepare` (same numbers, less work per call).
            final_tokens: the tokens whose output the caller reads; the final token-to-image
                attention (each query on its own) is computed for those only. Default: all N.
            dense_update: with ``prepared``: ``(z (B, L, r), m (r, C))``, low-rank changes of the
                prepared image tokens (mask prompts instead of none, :meth:`PromptEncoder.mask_update`):
                prompt b's tokens are ``prepared.src + z[b] @ m``.

        Returns:
            queries ``(B, N, C)`` (``(B, len(final_tokens), C)``) and keys ``(B, h*w, C)``.
        """
        if prepared is not None:
            # the second layer goes through the first one's update of the image (its ImageUpdate)
            record = [] if prepared.second is not None else None
            queries, keys = block(
                self.layers[0], point_embedding, prepared.src, point_embedding, prepared.pe, prepared, record,
                dense_update,
            )
            after = (prepared.second, record[0]) if record and record[0] is not None else None
            for i, layer in enumerate(self.layers[1:]):
                queries, keys = block(
                    layer, queries, keys, point_embedding, prepared.pe, after=after if i == 0 else None
                )
            return self._final(queries, keys, point_embedding, prepared.pe, final_tokens)
        # token layout (B, h*w, C), made contiguous once: element-wise passes over a transposed
        # view read with a stride of h*w and run several times slower
        if image_embedding.ndim == 4:
            image_embedding = to_tokens(image_embedding)
        image_pe = to_tokens(image_pe) if image_pe.ndim == 4 else image_pe
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = block(layer, queries, keys, point_embedding, image_pe)
        return self._final(queries, keys, point_embedding, image_pe, final_tokens)

    def _final(
        self,
        queries: Tensor,
        keys: Tensor,
        point_embedding: Tensor,
        image_pe: Tensor,
        final_tokens: list[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        if final_tokens is not None:
            queries, point_embedding = queries[:, final_tokens], point_embedding[:, final_tokens]
        attn_out = attention(self.module.final_attn_token_to_image, queries + point_embedding, keys + image_pe, keys)
        return self.module.norm_final_attn(queries + attn_out), keys


def block(
    layer: TwoWayAttentionBlock,
    queries: Tensor,
    keys: Tensor,
    query_pe: Tensor,
    key_pe: Tensor,
    prepared: PreparedImage | None = None,
    record: list[ImageUpdate | None] | None = None,
    update: tuple[Tensor, Tensor] | None = None,
    after: tuple[update_projection.PreparedLayer, ImageUpdate] | None = None,
) -> tuple[Tensor, Tensor]:
    """``queries (B, N, C)``, ``keys (B, L, C)``, ``query_pe (B, N, C)``, ``key_pe (1|B, L, C)``;
    ``prepared``: the image's projections for this (first) layer, ``keys`` being its ``src``;
    ``record``: a list that gets this layer's :class:`ImageUpdate` (None when its image-to-token
    attention was not computed through the prompt tokens); ``update``: with ``prepared``, the
    low-rank change of its tokens (see :meth:`FastTransformer.forward`); ``after``: for the second
    layer, the image's projections for it and the first layer's update, ``keys`` being that
    layer's output (:mod:`.update_projection`)."""
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    through = after is not None and all(update_projection.worth_it(a, after[1]) for a in (t2i, i2t))
    if layer.skip_first_layer_pe:
        queries = attention(layer.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + attention(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)

    if prepared is not None:
        out = asymmetric_attention.tokens_to_projected(t2i, queries + query_pe, prepared.t2i_k, prepared.t2i_v, update)
    elif through:
        out = update_projection.tokens_to_updated(t2i, queries + query_pe, *after)
    else:
        k = keys + key_pe
        out = attention(t2i, queries + query_pe, k, keys)
    queries = layer.norm2(queries + out)
    queries = layer.norm3(queries + layer.mlp(queries))

    # keys + attention output in one product (the residual is the product's accumulator)
    factors = [] if record is not None else None
    q = queries + query_pe
    if prepared is not None:
        out = asymmetric_attention.projected_to_tokens(i2t, prepared.i2t_q, q, queries, keys, factors, update)
    elif through:
        out = update_projection.updated_to_tokens(i2t, *after, q, queries, keys)
    else:
        out = attention(i2t, k, q, queries, residual=keys)
    norm = layer.norm4
    if record is None:
        return queries, norm(out)
    # the LayerNorm's statistics are part of the record
    keys, mean, rstd = torch.native_layer_norm(out, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    record.append(ImageUpdate(*factors[0], mean, rstd) if factors else None)
    return queries, keys


def _same_encoding(tokens: Tensor, image_pe: Tensor) -> bool:
    """Whether ``image_pe (1, C, h, w)`` is the encoding whose token layout is ``tokens (1, h*w,
    C)`` (shape, dtype, device and values; compared without a copy)."""
    return (
        image_pe.ndim == 4
        and image_pe.shape[0] == 1
        and tokens.shape[1:] == (image_pe.shape[2] * image_pe.shape[3], image_pe.shape[1])
        and tokens.dtype == image_pe.dtype
        and tokens.device == image_pe.device
        and torch.equal(tokens[0], image_pe[0].flatten(1).T)
    )


def attention(
    attn: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    residual: Tensor | None = None,
) -> Tensor:
    """``attn(q, k, v)`` (``q (B | 1, Nq, C)``, ``k, v (B | 1, Nk, C)`` -> ``(B, Nq, C)``, a batch-1
    side broadcast) through the few prompt tokens when that is cheaper (:mod:`.asymmetric_attention`);
    plus ``residual`` (broadcastable to the output) when given."""
    nq, nk = q.shape[1], k.shape[1]
    if worth_it(attn, nq, nk) and k.shape[0] == v.shape[0] == q.shape[0] and residual is None:
        return asymmetric_attention.tokens_to_image(attn, q, k, v)
    if worth_it(attn, nk, nq) and k.shape[0] == v.shape[0]:
        return asymmetric_attention.image_to_tokens(attn, q, k, v, residual)
    o = attn(q, k, v)
    return o if residual is None else o + residual
