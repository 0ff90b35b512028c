"""The two-way transformer on the CPU fast path: the plain modules' weights
(:mod:`napari_sam.models.transformer`), computed with the exact reassociations of
:mod:`.asymmetric_attention` and :mod:`.update_projection`, a per-image preparation of the first
layer, and two reused per-thread buffers for the image-token tensors (no page faults per click).

Same numbers as the plain :class:`~napari_sam.models.transformer.TwoWayTransformer` up to float
rounding (``tests/models/test_fast.py``); inference only (no autograd).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..common import to_tokens, weights_key
from ..transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from . import asymmetric_attention, update_projection
from .asymmetric_attention import worth_it


@dataclass
class PreparedImage:
    """The prompt-independent part of the first two-way layer for one image, computed once.

    ``src`` (1, L, C) image tokens (embedding + the no-mask dense prompt), ``pe`` (1, L, C) their
    positional encoding; ``t2i_k``/``t2i_v`` (1, L, D): the first layer's token-to-image key/value
    projections (keys of ``src + pe``); ``i2t_q`` (heads, D/heads, L): its image-to-token query
    projection of ``src + pe``, per head and transposed; ``second``: the second layer's image-token
    projections through the first layer's update (:mod:`.update_projection`; None for a single
    layer); ``final_e``: the final attention's keys' constant part
    (:func:`.update_projection.constant_part`); ``size`` the grid (h, w), L = h * w.
    """

    src: Tensor
    pe: Tensor
    t2i_k: Tensor
    t2i_v: Tensor
    i2t_q: Tensor
    size: tuple[int, int]
    second: update_projection.PreparedLayer | None = None
    final_e: Tensor | None = None


@dataclass
class PositionalParts:
    """What :meth:`TwoWayTransformer.prepare` computes from the positional encoding and the weights
    alone, the same for every image (:meth:`TwoWayTransformer.positional_parts`): ``pe`` (1, L, C)
    the encoding as tokens; ``t2i_k``, ``i2t_q`` (L, D): the first layer's token-to-image key and
    image-to-token query projections of ``pe``, biases included (those of ``src + pe`` are these
    plus ``src``'s, without bias); ``second``: the second layer's
    :func:`.update_projection.layer_constants` (None for a single layer); ``final_e``: the final
    attention's keys' constant part."""

    pe: Tensor
    t2i_k: Tensor
    i2t_q: Tensor
    second: tuple[Tensor, Tensor] | None
    final_e: Tensor


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


class FastTransformer:
    """CPU inference of ``module`` (a :class:`TwoWayTransformer`): :meth:`prepare` an image once,
    then :meth:`forward` its prompts. Keeps two caches computed from the positional encoding and
    the weights (see :meth:`positional_parts`, :meth:`pe_tokens`)."""

    def __init__(self, module: TwoWayTransformer) -> None:
        self.module = module
        self._positional_cache: tuple | None = None  # see positional_parts
        self._pe_tokens: tuple | None = None  # see pe_tokens

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
        return PreparedImage(src, parts.pe, t2i_k, t2i.v_proj(src), i2t_q, size, second, parts.final_e)

    def positional_parts(self, image_pe: Tensor) -> PositionalParts:
        """:class:`PositionalParts` of ``image_pe (1, C, h, w)``.

        Outside autograd the last result is kept and returned again for an equal encoding while
        the weights are unchanged (same storage, no in-place update: ``Tensor._version``): a
        third of :meth:`prepare`'s multiply-adds (vit_b: 5 of 11 products of ``L x C x D``), for
        ~10 MB kept (vit_b). The encoding is recognised through :meth:`pe_tokens`, which returns
        its one kept token layout for the same or an equal encoding."""
        key = weights_key(self.module)
        pe = self.pe_tokens(image_pe)
        cached = self._positional_cache if not torch.is_grad_enabled() else None
        if cached is not None and cached[0] == key and cached[1] is pe:
            return cached[2]
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        final = self.module.final_attn_token_to_image
        parts = PositionalParts(
            pe,
            t2i.k_proj(pe)[0],
            i2t.q_proj(pe)[0],
            update_projection.layer_constants(self.layers[1], first.norm4, pe) if self.depth > 1 else None,
            update_projection.constant_part(final.k_proj, self.layers[-1].norm4, pe, final.num_heads),
        )
        if not torch.is_grad_enabled():
            self._positional_cache = (key, pe, parts)
        return parts

    def pe_tokens(self, image_pe: Tensor) -> Tensor:
        """``image_pe (1 | B, C, h, w)`` as contiguous tokens ``(1 | B, h*w, C)``: a transposing
        copy per call saved (8 MB kept for SAM). Outside autograd the last result is kept and
        returned again for the same tensor, unchanged since (its version counter; a predictor
        passes its one encoding at every call), or for an equal one (compared by value: inference
        tensors have no version counter); under autograd it is always computed afresh."""
        kept = self._pe_tokens if not torch.is_grad_enabled() else None
        if kept is not None:
            ref, version, copy, pe = kept
            if ref() is image_pe and not image_pe.is_inference() and image_pe._version == version:
                return pe
            if _equal(copy, image_pe):
                return pe
        pe = to_tokens(image_pe)
        if not torch.is_grad_enabled():
            version = None if image_pe.is_inference() else image_pe._version
            self._pe_tokens = (weakref.ref(image_pe), version, image_pe.clone(), pe)
        return pe

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor | None,
        point_embedding: Tensor,
        prepared: PreparedImage | None = None,
        final_tokens: list[int] | None = None,
        trace: list[ImageUpdate | None] | None = None,
        dense_update: tuple[Tensor, Tensor] | None = None,
        tokens_out: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
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
            trace: a list that gets each layer's :class:`ImageUpdate` (None for a layer whose
                attention was not computed through the prompt tokens).
            dense_update: with ``prepared``: ``(z (B, L, r), m (r, C))``, low-rank changes of the
                prepared image tokens (mask prompts instead of none, :meth:`PromptEncoder.mask_update`):
                prompt b's tokens are ``prepared.src + z[b] @ m``.
            tokens_out: False: the caller reads the image tokens only through ``trace``; with
                ``prepared`` and a complete trace they are then never normalised by the last layer
                (the final attention reads them before its LayerNorm) and None is returned for keys.

        Returns:
            queries ``(B, N, C)`` (``(B, len(final_tokens), C)``) and keys ``(B, h*w, C)`` (or None,
            see ``tokens_out``). On a CPU outside autograd, keys is a buffer of this thread's that
            the next call overwrites.
        """
        # CPU inference: the image-token tensors go into this thread's two reused buffers
        image = prepared.src if prepared is not None else image_embedding
        reuse = image.device.type == "cpu" and not torch.is_grad_enabled()
        if prepared is not None:
            # the second layer goes through the first one's update of the image (its ImageUpdate)
            record = trace if trace is not None or prepared.second is None else []
            queries, keys = block(
                self.layers[0], point_embedding, prepared.src, point_embedding, prepared.pe, prepared, reuse, record,
                dense_update,
            )
            after = (prepared.second, record[0]) if prepared.second is not None and record[0] is not None else None
            n_final = point_embedding.shape[1] if final_tokens is None else len(final_tokens)
            raw = (  # the last layer's tokens stay before their LayerNorm
                not tokens_out
                and trace is not None
                and self.depth > 1
                and worth_it(self.module.final_attn_token_to_image, n_final, prepared.src.shape[1])
            )
            for i, layer in enumerate(self.layers[1:]):
                last = raw and i == self.depth - 2 and all(trace)
                queries, keys = block(
                    layer, queries, keys, point_embedding, prepared.pe, reuse=reuse, trace=trace,
                    after=after if i == 0 else None, raw=last,
                )
            if raw and all(trace):
                return self._final_raw(queries, keys, point_embedding, prepared, trace[-1], final_tokens), None
            return self._final(queries, keys, point_embedding, prepared.pe, final_tokens, reuse)
        # token layout (B, h*w, C), made contiguous once: element-wise passes over a transposed
        # view read with a stride of h*w and run several times slower
        if image_embedding.ndim == 4:
            image_embedding = to_tokens(image_embedding)
        image_pe = self.pe_tokens(image_pe)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = block(layer, queries, keys, point_embedding, image_pe, reuse=reuse, trace=trace)
        return self._final(queries, keys, point_embedding, image_pe, final_tokens, reuse)

    def _final(
        self,
        queries: Tensor,
        keys: Tensor,
        point_embedding: Tensor,
        image_pe: Tensor,
        final_tokens: list[int] | None = None,
        reuse: bool = False,
    ):
        if final_tokens is not None:
            queries, point_embedding = queries[:, final_tokens], point_embedding[:, final_tokens]
        k = _add(keys, image_pe, reuse)
        attn_out = attention(self.module.final_attn_token_to_image, queries + point_embedding, k, keys)
        return self.module.norm_final_attn(queries + attn_out), keys

    def _final_raw(
        self,
        queries: Tensor,
        y: Tensor,
        point_embedding: Tensor,
        prepared: PreparedImage,
        update: ImageUpdate,
        final_tokens: list[int] | None = None,
    ) -> Tensor:
        """:meth:`_final`'s queries from the last layer's image tokens before their LayerNorm
        (``y``; ``update`` has its statistics)."""
        if final_tokens is not None:
            queries, point_embedding = queries[:, final_tokens], point_embedding[:, final_tokens]
        attn_out = asymmetric_attention.tokens_to_normalized(
            self.module.final_attn_token_to_image, queries + point_embedding, y, update.mean, update.rstd,
            self.layers[-1].norm4, prepared.final_e,
        )
        return self.module.norm_final_attn(queries + attn_out)


def block(
    layer: TwoWayAttentionBlock,
    queries: Tensor,
    keys: Tensor,
    query_pe: Tensor,
    key_pe: Tensor,
prepared: PreparedImage | None = None,
    reuse: bool = False,
    trace: list[ImageUpdate | None] | None = None,
    update: tuple[Tensor, Tensor] | None = None,
    after: tuple[update_projection.PreparedLayer, ImageUpdate] | None = None,
    raw: bool = False,
) -> tuple[Tensor, Tensor]:
    """``queries (B, N, C)``, ``keys (B, L, C)``, ``query_pe (B, N, C)``, ``key_pe (1|B, L, C)``;
    ``prepared``: the image's projections for this (first) layer, ``keys`` being its ``src``;
    ``reuse``: write the image-token tensors into this thread's buffers (see :func:`_buffer`);
    ``trace``: a list that gets this layer's :class:`ImageUpdate` (or None); ``update``: with
    ``prepared``, the low-rank change of its tokens (see :meth:`FastTransformer.forward`);
    ``after``: for the second layer, the image's projections for it and the first layer's
    update, ``keys`` being that layer's output (:mod:`.update_projection`); ``raw`` (with
    ``trace``): return the image tokens before this layer's last LayerNorm when its attention
    went through the prompt tokens (its statistics are in the trace either way)."""
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
        k = _add(keys, key_pe, reuse)
        out = attention(t2i, queries + query_pe, k, keys)
    queries = layer.norm2(queries + out)
    queries = layer.norm3(queries + layer.mlp(queries))

    # keys + attention output in one product (the residual is the product's accumulator)
    record = [] if trace is not None else None
    if prepared is not None or through:
        q = queries + query_pe
        into = _buffer("a", (q.shape[0],) + tuple(keys.shape[1:]), keys) if reuse else None
        if prepared is not None:
            out = asymmetric_attention.projected_to_tokens(i2t, prepared.i2t_q, q, queries, keys, into, record, update)
        else:
            out = update_projection.updated_to_tokens(i2t, *after, q, queries, keys, into, record)
    else:
        # into k's buffer: image-to-token attention reads its queries (k) before it writes
        into = k if reuse and k.shape[0] == queries.shape[0] else None  # not a shared image's
        out = attention(i2t, k, queries + query_pe, queries, residual=keys, out=into, record=record)
    norm = layer.norm4
    if raw and record:  # the caller reads the tokens through their statistics
        scratch = _buffer("keys", tuple(out.shape), out) if reuse else None
        trace.append(ImageUpdate(*record[0], *_layer_norm_stats(out, norm.eps, scratch)))
        return queries, out
    if reuse:
        keys, mean, rstd = _layer_norm_into(out, norm, _buffer("keys", tuple(out.shape), out))
    elif trace is None:
        return queries, norm(out)
    else:
        keys, mean, rstd = torch.native_layer_norm(out, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    if trace is not None:  # the LayerNorm's statistics are part of the trace
        trace.append(ImageUpdate(*record[0], mean, rstd) if record else None)
    return queries, keys


_BUFFERS = threading.local()


def _buffer(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """This thread's reused buffer ``name`` (``"a"``, ``"keys"``; the mask decoder's upscaling also
    uses ``"a"`` once the transformer is done, and ``"up"``) of ``shape``, new when the shape,
    dtype or device changes.

    One click on a CPU otherwise allocates six fresh (1, L, C) tensors (4 MB each for SAM); glibc
    maps blocks that size from the OS and page-faults them in on every call, which costs as much
    as the arithmetic on them. Two buffers suffice: "a" for the sum ``keys + pe`` and then the
    next keys before their LayerNorm, "keys" for the normalised keys.
    """
    bufs = vars(_BUFFERS).setdefault("bufs", {})
    t = bufs.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = bufs[name] = like.new_empty(shape)
    return t


def _equal(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype, device and values."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _add(keys: Tensor, pe: Tensor, reuse: bool) -> Tensor:
    """``keys + pe`` (image tokens plus their positional encoding), into buffer "a" with ``reuse``."""
    return torch.add(keys, pe, out=_buffer("a", tuple(keys.shape), keys)) if reuse else keys + pe


def _layer_norm_into(x: Tensor, norm: nn.LayerNorm, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``norm(x)`` over the last axis written into ``out`` (``x`` unchanged), with the mean and
    reciprocal standard deviation ``(..., 1)`` it used: ATen's LayerNorm has no out= variant that
    skips its own allocation. Within 1e-5 of it (two-pass mean and norm)."""
    mean, rstd = _layer_norm_stats(x, norm.eps, out)
    return torch.addcmul(norm.bias, out.mul_(rstd), norm.weight, out=out), mean, rstd


def _layer_norm_stats(x: Tensor, eps: float, centred: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LayerNorm's ``mean`` and ``rstd`` ``(..., 1)`` of ``x`` over its last axis; ``x - mean``
    is written into ``centred`` (default: a new tensor). Two passes: several times faster on a
    CPU than ``var_mean``."""
    mean = x.mean(-1, keepdim=True)
    if centred is None:  # out of place (autograd)
        return mean, ((x - mean).square().mean(-1, keepdim=True) + eps).rsqrt()
    torch.sub(x, mean, out=centred)
    rstd = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return mean, rstd


def attention(
    attn: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    residual: Tensor | None = None,
    out: Tensor | None = None,
    record: list | None = None,
) -> Tensor:
    """``attn(q, k, v)`` (``q (B | 1, Nq, C)``, ``k, v (B | 1, Nk, C)`` -> ``(B, Nq, C)``, a batch-1
    side broadcast) through the few prompt tokens when that is cheaper (:mod:`.asymmetric_attention`);
    plus ``residual`` (broadcastable to the output) when given; ``out``: where image-to-token
    attention writes its result, when given (``q``'s storage is allowed); ``record``: gets the
    factors of image-to-token attention through the prompt tokens, when it is computed so
    (:func:`.asymmetric_attention.image_to_tokens`)."""
    nq, nk = q.shape[1], k.shape[1]
    if worth_it(attn, nq, nk) and k.shape[0] == v.shape[0] == q.shape[0] and residual is None:
        return asymmetric_attention.tokens_to_image(attn, q, k, v)
    if worth_it(attn, nk, nq) and k.shape[0] == v.shape[0]:
        return asymmetric_attention.image_to_tokens(attn, q, k, v, residual, out, record)
    o = attn(q, k, v)
    return o if residual is None else o + residual
