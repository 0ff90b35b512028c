"""The reassociated decoder cross-attentions equal plain multi-head attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_sam.models.fast import asymmetric_attention
from napari_sam.models.fast.transformer import attention
from napari_sam.models.transformer import Attention


def _plain(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: project everything, SDPA, project back (the official computation)."""
    h = attn.num_heads
    qp, kp, vp = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    b = max(qp.shape[0], kp.shape[0])
    split = lambda t: t.expand(b, -1, -1).reshape(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(qp), split(kp), split(vp))
    return attn.out_proj(out.transpose(1, 2).reshape(b, -1, attn.internal_dim))


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    a = Attention(256, 8, downsample_rate=2).eval()
    for p in a.parameters():  # non-zero biases so that the bias algebra is exercised
        torch.nn.init.normal_(p, std=0.05)
    return a


@pytest.mark.parametrize("batch", [1, 3])
def test_tokens_to_image(attn: Attention, batch: int) -> None:
    q = torch.randn(batch, 7, 256)
    k, v = torch.randn(batch, 1024, 256), torch.randn(batch, 1024, 256)
    assert asymmetric_attention.worth_it(attn, 7, 1024)
    fast = asymmetric_attention.tokens_to_image(attn, q, k, v)
    torch.testing.assert_close(fast, _plain(attn, q, k, v), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attention(attn, q, k, v), fast)  # the fast path dispatches to it
    torch.testing.assert_close(attn(q, k, v), fast, rtol=1e-4, atol=1e-5)  # the plain module


@pytest.mark.parametrize("image_batch", [1, 3])
def test_image_to_tokens(attn: Attention, image_batch: int) -> None:
    q = torch.randn(image_batch, 1024, 256)  # batch 1: a shared image, broadcast over prompts
    k, v = torch.randn(3, 7, 256), torch.randn(3, 7, 256)
    fast = asymmetric_attention.image_to_tokens(attn, q, k, v)
    assert fast.shape == (3, 1024, 256)
    torch.testing.assert_close(fast, _plain(attn, q, k, v), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attention(attn, q, k, v), fast)
    torch.testing.assert_close(attn(q, k, v), fast, rtol=1e-4, atol=1e-5)
    # the residual is accumulated by the product (broadcast from a shared image's batch 1)
    res = torch.randn(image_batch, 1024, 256)
    torch.testing.assert_close(attention(attn, q, k, v, residual=res), fast + res, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompts", [1, 3])
def test_projected_to_tokens(attn: Attention, prompts: int) -> None:
    """The first decoder layer's path: the shared image's query projection given per head, transposed."""
    q = torch.randn(1, 1024, 256)
    k, v = torch.randn(prompts, 7, 256), torch.randn(prompts, 7, 256)
    qpt = attn.q_proj(q)[0].reshape(1024, attn.num_heads, -1).permute(1, 2, 0).contiguous()
    res = torch.randn(1, 1024, 256)
    fast = asymmetric_attention.projected_to_tokens(attn, qpt, k, v, res)
    assert fast.shape == (prompts, 1024, 256)
    torch.testing.assert_close(fast, _plain(attn, q, k, v) + res, rtol=1e-4, atol=1e-5)


def test_many_tokens_use_the_plain_path(attn: Attention) -> None:
    assert not asymmetric_attention.worth_it(attn, 40, 4096)  # 8 heads * 40 tokens > 3/4 of 128
    q, k = torch.randn(1, 40, 256), torch.randn(1, 4096, 256)
    torch.testing.assert_close(attention(attn, q, k, k), _plain(attn, q, k, k), rtol=1e-4, atol=1e-5)


def test_gradients_flow(attn: Attention) -> None:
    attn.train()
    q = torch.randn(2, 6, 256, requires_grad=True)
    k = torch.randn(2, 512, 256, requires_grad=True)
    attention(attn, q, k, k).sum().backward()
    assert q.grad is not None and k.grad is not None and attn.k_proj.weight.grad is not None
