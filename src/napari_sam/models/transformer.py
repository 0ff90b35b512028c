"""TwoWayTransformer: prompt tokens and image tokens attend to each other (SAM's mask decoder core).

Shaped like ``segment_anything/modeling/transformer.py`` (same parts, names and parameters, so the
official state dicts load as they are); attention runs through ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels on a GPU, the same numbers up to float rounding). This is the
reference every fast path is tested against (``models/fast``), and the path used on GPUs and in
training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token-to-image attention and LayerNorm.

    Args:
        depth: number of :class:`TwoWayAttentionBlock` layers.
        embedding_dim: channels ``C`` of the image embedding and the tokens.
        num_heads: attention heads (must divide ``embedding_dim // attention_downsample_rate``).
        mlp_dim: hidden width of the token MLP.
        activation: the token MLP's activation.
        attention_downsample_rate: the cross-attentions' internal width is ``C // rate``.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: ``(B, C, h, w)`` image tokens to attend to.
            image_pe: ``(1 | B, C, h, w)`` their positional encoding (a batch of one is broadcast).
            point_embedding: ``(B, N, C)`` prompt tokens (output tokens + sparse prompts).

        Returns:
            the processed tokens ``(B, N, C)`` and image tokens ``(B, h*w, C)``.
        """
        image_embedding = image_embedding.flatten(2).transpose(1, 2)  # (B, h*w, C)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        attn_out = self.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of the tokens, tokens -> image cross-attention, token MLP, image -> tokens
    cross-attention; each followed by a residual and a LayerNorm. ``skip_first_layer_pe``: the
    first block's self-attention sees the tokens without their positional encoding added."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``queries (B, N, C)``, ``keys (B, L, C)``, ``query_pe (B, N, C)``, ``key_pe (1 | B, L, C)``
        -> updated ``(queries, keys)``, same shapes."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose internal width is ``embedding_dim // downsample_rate``; keys and
    values of width ``kv_in_dim`` (default ``embedding_dim``; SAM 2's memory attention uses 64).
    ``dropout`` applies to the attention weights in training only."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.dropout_p = dropout
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def separate_heads(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, heads, N, D / heads)`` (a view)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def recombine_heads(self, x: Tensor) -> Tensor:
        """``(B, heads, N, D / heads) -> (B, N, D)``."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q (B, Nq, C)``, ``k, v (B, Nk, C)`` -> ``(B, Nq, C)``; a batch-1 side is broadcast."""
        q = self.separate_heads(self.q_proj(q))
        k = self.separate_heads(self.k_proj(k))
        v = self.separate_heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (t if t.shape[0] == b else t.expand(b, -1, -1, -1) for t in (q, k, v))
        return self.out_proj(self.recombine_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)))
