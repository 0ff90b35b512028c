"""Mask post-processing: the official upsample-crop-upsample-threshold, computed with less work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import napari_sam.engine.postprocess as pp
from napari_sam.engine.postprocess import MaskUpsampler, banded_threshold, resize_threshold


def _blobs(n: int = 3, seed: int = 0) -> torch.Tensor:
    """(n, 1, 256, 256) low-res logits of a few round objects (signed distance-like), as real masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    out = torch.full((n, 1, 256, 256), -8.0)
    for i in range(n):
        for _ in range(4):
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([256, 256, 30]) + torch.tensor([0, 0, 6])).tolist()
            d = r - torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            out[i, 0] = torch.maximum(out[i, 0], d)
    return out


def _official(low: torch.Tensor, input_size, original_size) -> torch.Tensor:
    x = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False) > 0


@pytest.mark.parametrize("banded", [True, False, "batched"])
@pytest.mark.parametrize("kind", ["blobs", "noise"])
@pytest.mark.parametrize(
    "original", [(1024, 1024), (2048, 1536), (1000, 750), (700, 1100), (333, 517), (12, 9)]
)
def test_upsampler_equals_official(kind, original, banded):
    """Bool masks by the banded products (a CPU's default), by the plain kernel per plane, and by
    the official's batched kernels (a GPU's default: no per-mask work, no host sync)."""
    torch.manual_seed(1)
    low = _blobs() if kind == "blobs" else torch.randn(3, 1, 256, 256)
    s = max(original)
    input_size = (int(original[0] * 1024 / s + 0.5), int(original[1] * 1024 / s + 0.5))
    ref = _official(low, input_size, original)
    up = MaskUpsampler(1024, batched=True) if banded == "batched" else MaskUpsampler(1024, banded=banded)
    got = up(low.reshape(1, 3, 256, 256), input_size, original)
    assert got.shape == (1, 3, *original) and got.dtype == torch.bool
    assert int((got[0] != ref[:, 0]).sum()) <= 2  # equal up to values within rounding of 0
    logits = up(low.reshape(1, 3, 256, 256), input_size, original, threshold=None)
    torch.testing.assert_close(logits[0] > 0, ref[:, 0])


@pytest.mark.parametrize(
    "n_in, stages", [(256, ((1024, 1024),)), (193, ((772, 768), (1536, 1536))), (256, ((1024, 765), (520, 520))), (7, ((3, 3),))]
)
def test_band_is_the_resize_chain(n_in, stages):
    """The banded blocks are the chain of F.interpolate resizes and crops along one axis, as a
    linear map: applied to float64 data they give the chain's values."""
    x = torch.randn(5, n_in, dtype=torch.float64)
    ref = x[:, None, :]
    for size, kept in stages:
        ref = F.interpolate(ref, size=size, mode="linear", align_corners=False)[..., :kept]
    w, idx = pp._band(n_in, stages, torch.device("cpu"), torch.float64)
    n_out = stages[-1][1]
    assert w.shape[0] == idx.shape[0] == -(-n_out // pp._BLOCK) and w.shape[2] == idx.shape[1]
    got = torch.einsum("bok,rbk->rbo", w, x[:, idx]).reshape(5, -1)[:, :n_out]
    torch.testing.assert_close(got, ref[:, 0], rtol=0, atol=1e-12)  # float64 taps for float64 data


def test_banded_threshold_in_chunks(monkeypatch):
    """Rows come in chunks of blocks (the last one partial): same masks as one chunk."""
    torch.manual_seed(3)
    low = torch.randn(200, 150)
    stages_r, stages_c = ((800, 790),), ((600, 590),)
    whole = banded_threshold(low, stages_r, stages_c, 0.0, torch.empty(790, 590, dtype=torch.bool))
    monkeypatch.setattr(pp, "_CHUNK", 3 * pp._BLOCK * 590)
    chunked = banded_threshold(low, stages_r, stages_c, 0.0, torch.empty(790, 590, dtype=torch.bool))
    ref = F.interpolate(low[None, None], (800, 600), mode="bilinear", align_corners=False)[0, 0, :790, :590] > 0
    assert torch.equal(chunked, whole) and int((whole != ref).sum()) <= 2


def test_resize_threshold_decides_tiles_without_arithmetic():
    """A smooth plane is mostly decided from the signs of its source pixels; noise is refused."""
    low = _blobs(1)[0, 0]
    ref = F.interpolate(low[None, None], (2048, 2048), mode="bilinear", align_corners=False)[0, 0] > 0
    assert torch.equal(resize_threshold(low, [((2048, 2048), (2048, 2048))], 0.0), ref)
    crop = resize_threshold(low[:200, :150], [((800, 600), (790, 590))], 0.0)
    ref = F.interpolate(low[None, None, :200, :150], (800, 600), mode="bilinear", align_corners=False)
    assert torch.equal(crop, ref[0, 0, :790, :590] > 0)
    assert resize_threshold(torch.randn(256, 256), [((1024, 1024), (1024, 1024))], 0.0) is None


@pytest.mark.parametrize("original", [(2048, 1536), (1000, 750), (333, 517)])
def test_resize_chain_on_tiles_equals_official(original):
    """Both resizes of the official post-processing, evaluated on the undecided tiles only."""
    low = _blobs(1)
    s = max(original)
    input_size = (int(original[0] * 1024 / s + 0.5), int(original[1] * 1024 / s + 0.5))
    ref = _official(low, input_size, original)[0, 0]
    got = resize_threshold(low[0, 0], [((1024, 1024), input_size), (original, original)], 0.0)
    assert got is not None and int((got != ref).sum()) <= 2


@pytest.mark.parametrize("threshold", [0.0, 0.37, -1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsampler_threshold_equals_torch_comparison(threshold, dtype):
    """Bool masks (thresholded through numpy for float32 on a CPU, torch otherwise), inside
    inference mode as the predictor runs it, equal ``logits > threshold`` computed by torch."""
    torch.manual_seed(2)
    low = torch.randn(1, 2, 256, 256, dtype=dtype) * 2
    up = MaskUpsampler(1024)
    with torch.inference_mode():
        logits = up(low, (1024, 768), (2048, 1536), threshold=None)
        got = up(low, (1024, 768), (2048, 1536), threshold=threshold)
    assert got.dtype == torch.bool and got.shape == (1, 2, 2048, 1536)
    assert torch.equal(got, logits > threshold)


def test_upsampler_takes_logits_that_require_grad():
    """Bool masks from logits of a model in training (autograd on): no error, same masks; the
    logits path keeps the graph."""
    low = torch.randn(1, 3, 256, 256, requires_grad=True)
    up = MaskUpsampler(1024)
    masks = up(low, (1024, 768), (600, 450))
    logits = up(low, (1024, 768), (600, 450), threshold=None)
    assert masks.dtype == torch.bool and not masks.requires_grad
    assert logits.requires_grad and torch.equal(masks, logits.detach() > 0)
