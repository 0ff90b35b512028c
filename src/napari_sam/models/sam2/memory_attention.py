"""SAM 2's memory attention: the current frame's (slice's) image tokens attend to themselves and
to the memories of earlier frames (plus their object pointers), with axial rotary position
encodings (RoPE). Shaped like ``sam2/modeling/memory_attention.py`` and ``RoPEAttention`` of
``sam2/modeling/sam/transformer.py`` (same modules, attribute names and state-dict keys; same
sequence-first interface).

One propagation step at 1024 px: 64x64 = 4096 current tokens (256 channels) attend to up to seven
64x64 memories (64 channels) and up to 16 pointer tokens per earlier frame. The rotation table of a
grid is computed once (not per call), queries and keys are rotated in place, and the keys of
several memory frames share the table by broadcasting, not by a repeated copy.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transformer import Attention
from .position_encoding import compute_axial_cis

SAM21_ARCHS = ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")


def check_arch(arch: str | None) -> None:
    """The memory parts are the same in all four SAM 2.1 configs; ``arch`` only has to be one of them."""
    if arch is not None and arch not in SAM21_ARCHS:
        raise KeyError(f"unknown SAM 2.1 architecture {arch!r}; known: {', '.join(SAM21_ARCHS)}")


def rotate_(x: Tensor, cis: Tensor) -> Tensor:
    """Rotate, in place, each channel pair ``(x[2i], x[2i+1])`` of ``x (..., N, D)``, taken as a
    complex number, by ``cis (N, D // 2)`` (complex, unit modulus; broadcast over the leading axes).
    The product is computed in float32 (as Meta's ``apply_rotary_enc``) and written back; returns ``x``."""
    if x.dtype == torch.float32:
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(cis)
    else:
        x.copy_(torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * cis).flatten(-2))
    return x


class RoPEAttention(Attention):
    """:class:`Attention` with axial rotary position encodings on queries and keys.

    Queries are the tokens of a square grid (``feat_sizes``, ``[w, h]``, by default; another square
    grid is handled when the token count differs). With ``rope_k_repeat`` the keys are several frames
    of that grid (cross-attention to memories), each rotated alike; the last ``num_k_exclude_rope``
    keys of a call (object pointers) are not rotated.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] | list[int] = (64, 64),
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, dropout, kv_in_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = (int(feat_sizes[0]), int(feat_sizes[1]))
        self._tables: dict[tuple, Tensor] = {}

    def rope_table(self, num_tokens: int, device: torch.device) -> Tensor:
        """The rotations (complex ``(num_tokens, head_dim // 2)``) of the ``feat_sizes`` grid, or of
        a square grid of ``num_tokens`` when that differs; computed once per grid and device."""
        end_x, end_y = self.feat_sizes
        if end_x * end_y != num_tokens:
            end_x = end_y = math.isqrt(num_tokens)
            if end_x * end_y != num_tokens:
                raise ValueError(f"RoPE needs a square grid of query tokens, got {num_tokens}")
        key = (end_x, end_y, device)
        if key not in self._tables:
            dim = self.internal_dim // self.num_heads
            self._tables[key] = compute_axial_cis(dim, end_x, end_y, self.rope_theta).to(device)
        return self._tables[key]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """``q (B, Nq, C)``, ``k, v (B, Nk, kv_in_dim)`` -> ``(B, Nq, C)``. ``Nk - num_k_exclude_rope``
        must be ``Nq``, or a multiple of it with ``rope_k_repeat``."""
        q = self.separate_heads(self.q_proj(q))  # (B, heads, Nq, d)
        k = self.separate_heads(self.k_proj(k))
        v = self.separate_heads(self.v_proj(v))

        # q and k are fresh projections: rotated in place (autograd records it)
        n = q.shape[-2]
        cis = self.rope_table(n, q.device)
        rotate_(q, cis)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if k.shape[-2] != n and not self.rope_k_repeat:
            raise ValueError(f"{k.shape[-2]} keys for {n} queries need rope_k_repeat")
        if num_k_rope > 0:
            if num_k_rope % n:
                raise ValueError(f"{num_k_rope} rotated keys are not whole frames of {n} tokens")
            rotate_(k[:, :, :num_k_rope].unflatten(2, (-1, n)), cis)  # (B, heads, frames, n, d)

        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self.recombine_heads(out))


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention (``self_attn``), cross-attention to the memories
    (``cross_attn_image``) and a feed-forward MLP, each with a residual. Tokens batch-first:
    ``tgt (B, N, d_model)``, ``memory (B, M, kv_dim)``.

    Args:
        activation: the MLP's activation, ``"relu"``, ``"gelu"`` or ``"glu"``.
        cross_attention / self_attention: the attention modules (:class:`RoPEAttention` in SAM 2).
        d_model: token channels; dim_feedforward: the MLP's hidden width.
        dropout: dropout after each sub-layer and in the MLP (training only).
        pos_enc_at_attn: add ``query_pos`` to the self-attention's queries and keys.
        pos_enc_at_cross_attn_keys / _queries: add ``pos`` to the memory keys / ``query_pos`` to
            the cross-attention's queries.
    """

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation should be relu/gelu/glu, not {activation}")
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.activation_str = activation
        self.activation = _ACTIVATIONS[activation]

        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def _forward_sa(self, tgt: Tensor, query_pos: Tensor | None) -> Tensor:
        tgt2 = self.norm1(tgt)
        q = k = tgt2 + query_pos if self.pos_enc_at_attn else tgt2
        return tgt + self.dropout1(self.self_attn(q, k, v=tgt2))

    def _forward_ca(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor | None,
        pos: Tensor | None,
        num_k_exclude_rope: int = 0,
    ) -> Tensor:
        kwds = {}
        if num_k_exclude_rope > 0:
            if not isinstance(self.cross_attn_image, RoPEAttention):
                raise TypeError("num_k_exclude_rope needs a RoPEAttention cross-attention")
            kwds = {"num_k_exclude_rope": num_k_exclude_rope}
        tgt2 = self.norm2(tgt)
        tgt2 = self.cross_attn_image(
            q=tgt2 + query_pos if self.pos_enc_at_cross_attn_queries else tgt2,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            **kwds,
        )
        return tgt + self.dropout2(tgt2)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> Tensor:
        """``tgt (B, N, d_model)``, ``memory (B, M, kv_dim)``, ``pos`` like ``memory``, ``query_pos``
        like ``tgt`` -> ``(B, N, d_model)``; the last ``num_k_exclude_rope`` memory tokens unrotated."""
        tgt = self._forward_sa(tgt, query_pos)
        tgt = self._forward_ca(tgt, memory, query_pos, pos, num_k_exclude_rope)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(tgt2)


class MemoryAttention(nn.Module):
    """``num_layers`` copies of ``layer`` and a final LayerNorm: the current frame's features
    conditioned on the memories.

    Args:
        d_model: token channels (256).
        pos_enc_at_input: add ``0.1 * curr_pos`` to the input tokens.
        layer: a :class:`MemoryAttentionLayer`, deep-copied ``num_layers`` times.
        batch_first: the layers take batch-first tokens (the inputs and output stay sequence-first).
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: Tensor | list[Tensor],
        memory: Tensor,
        curr_pos: Tensor | list[Tensor] | None = None,
        memory_pos: Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> Tensor:
        """
        Args:
            curr: ``(N, B, d_model)`` current-frame tokens (or a one-element list of it).
            memory: ``(M, B, kv_dim)`` memory tokens, the ``num_obj_ptr_tokens`` object-pointer tokens last.
            curr_pos: ``curr``'s position encoding (or a one-element list), like ``curr``.
            memory_pos: ``memory``'s position encoding, like ``memory``.
            num_obj_ptr_tokens: how many trailing memory tokens are object pointers (not rotated).

        Returns:
            ``(N, B, d_model)``, normalised.
        """
        if isinstance(curr, list):
            if not isinstance(curr_pos, list) or len(curr) != 1 or len(curr_pos) != 1:
                raise ValueError("curr and curr_pos given as lists must both hold one tensor")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError("Batch size must be the same for curr and memory")

        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos
        if self.batch_first:
            output = output.transpose(0, 1)
            curr_pos = None if curr_pos is None else curr_pos.transpose(0, 1)
            memory = memory.transpose(0, 1)
            memory_pos = None if memory_pos is None else memory_pos.transpose(0, 1)

        for layer in self.layers:
            kwds = {}
            if isinstance(layer.cross_attn_image, RoPEAttention):
                kwds = {"num_k_exclude_rope": num_obj_ptr_tokens}
            output = layer(tgt=output, memory=memory, pos=memory_pos, query_pos=curr_pos, **kwds)
        normed_output = self.norm(output)
        return normed_output.transpose(0, 1) if self.batch_first else normed_output


def build_memory_attention(arch: str | None = None) -> MemoryAttention:
    """SAM 2.1's memory attention (the same in all four configs, ``sam2.1_hiera_{t,s,b+,l}.yaml``):
    four layers, d_model 256, one head, RoPE on a 64x64 grid, 64-channel memories, ReLU MLP of 2048."""
    check_arch(arch)
    layer = MemoryAttentionLayer(
        activation="relu",
        dim_feedforward=2048,
        dropout=0.1,
        pos_enc_at_attn=False,
        self_attention=RoPEAttention(
            rope_theta=10000.0,
            feat_sizes=(64, 64),
            embedding_dim=256,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
        ),
        d_model=256,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=RoPEAttention(
            rope_theta=10000.0,
            feat_sizes=(64, 64),
            rope_k_repeat=True,
            embedding_dim=256,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            kv_in_dim=64,
        ),
    )
    return MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=4)
