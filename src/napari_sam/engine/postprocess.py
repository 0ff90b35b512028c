"""SAM's mask post-processing (low-res logits -> masks at the original image size), the official
arithmetic with less work: only the low-res rows/columns that reach the crop are upsampled, an
identity resize is skipped, and bool masks on a CPU take both resizes as one banded linear map per
axis (:func:`banded_threshold`), or, for large smooth masks, only the tiles whose sign is in doubt
(:func:`resize_threshold`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

# a reused buffer is kept up to this many float elements (64 MiB); larger ones are made per call
_KEEP_BUFFER = 2**24
_TILE = 32  # output tiles of this side are decided together
_MAX_MIXED = 0.25  # above this fraction of undecided tiles, interpolate the whole plane
_TILE_MIN_PIXELS = 2**21  # smaller masks: the plain kernel is as fast (measured, 2 threads)
_BLOCK = 32  # output rows (columns) per block of the banded resize
_CHUNK = 2**21  # float elements of banded output computed and thresholded at a time (8 MiB, cache-sized)


class MaskUpsampler:
    """``(B, C, 256, 256)`` logits -> ``(B, C, H, W)`` masks for an encoder of side ``img_size``.

    Same numbers as the official ``postprocess_masks`` (bilinear to ``(img_size, img_size)``, crop
    to ``input_size``, bilinear to ``original_size``, align_corners=False) followed by ``> threshold``:
    the logits exactly; bool masks up to values within float rounding of the threshold, computed
    with ``banded`` products (default: on a CPU, where they are several times faster than the
    kernel) or the plain kernel, and from the undecided tiles only for large smooth masks.
    Not thread-safe (the buffers are shared): one per predictor.
    """

    def __init__(self, img_size: int, banded: bool | None = None, batched: bool | None = None) -> None:
        self.img_size = int(img_size)
        self._buffers: dict[str, torch.Tensor] = {}
        self.banded = banded  # bool masks through banded_threshold; None: on a CPU only
        self.batched = batched  # bool masks through the official's batched kernels; None: off a CPU only

    def __call__(
        self,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        threshold: float | None = 0.0,
    ) -> torch.Tensor:
        """Bool masks ``logits > threshold``, or the float logits when ``threshold`` is None."""
        s = self.img_size
        b, c, lh, lw = low_res.shape
        # one plane per mask: the CPU bilinear kernel takes a slow channels-last route for C = 3
        low = low_res.reshape(b * c, 1, lh, lw)
        h, w = int(input_size[0]), int(input_size[1])
        size = (int(original_size[0]), int(original_size[1]))
        scales: tuple[float | None, float | None] = (None, None)
        if s % lh == 0 and s // lh == s // lw and s % lw == 0:
            f = s // lh  # output row y reads rows floor((y + .5) / f - .5) and the next one
            rh, rw = min(lh, -(-h // f) + 1), min(lw, -(-w // f) + 1)
            low, first, scales = low[..., :rh, :rw], (rh * f, rw * f), (float(f), float(f))
        else:
            first = (s, s)
        if threshold is None:  # logits are the result: plain (fresh) tensors
            x = torch._C._nn.upsample_bilinear2d(low, first, False, *scales)[..., :h, :w]
            if size != (h, w):
                x = F.interpolate(x, size, mode="bilinear", align_corners=False)
            return x.reshape(b, c, *x.shape[-2:])
        low = low.detach()  # bool masks carry no gradient; the buffers below are written with out=
        if self.batched if self.batched is not None else low.device.type != "cpu":
            # a GPU: the official's few batched kernels, no per-mask work and no host sync (so a
            # CUDA graph can hold them)
            x = torch._C._nn.upsample_bilinear2d(low, first, False, *scales)[..., :h, :w]
            if size != (h, w):
                x = F.interpolate(x, size, mode="bilinear", align_corners=False)
            return (x > threshold).reshape(b, c, *size)
        out = torch.empty((b * c, 1, *size), dtype=torch.bool, device=low.device)
        stages = [(first, (h, w))] if size == (h, w) else [(first, (h, w)), (size, size)]  # (resize, crop)
        banded = self.banded if self.banded is not None else low.device.type == "cpu"
        if banded:  # the same chain per axis
            rows, cols = (tuple((st[k], kept[k]) for st, kept in stages) for k in (0, 1))
        for i in range(b * c):
            if size[0] * size[1] >= _TILE_MIN_PIXELS and _mostly_decided(low[i, 0], threshold):
                # both resizes (or the one) on the undecided tiles only
                m = resize_threshold(low[i, 0], stages, threshold)
                if m is not None:
                    out[i, 0] = m
                    continue
            if banded:
                banded_threshold(low[i, 0], rows, cols, threshold, out[i, 0], self._buffer)
                continue
            x = self._buffer("first", first, low)  # the plain path: interpolate the whole plane
            torch._C._nn.upsample_bilinear2d(low[i : i + 1], first, False, *scales, out=x)
            x = x[..., :h, :w]
            if size != (h, w):
                y = self._buffer("final", size, low)
                torch._C._nn.upsample_bilinear2d(x, size, False, None, None, out=y)
                x = y
            _greater(x, threshold, out[i : i + 1])
        return out.reshape(b, c, *size)

    def _buffer(self, key: str, size: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A float buffer of ``like``'s dtype/device, ``(1, 1, *size)`` for a plane ``size (H, W)``,
        else of shape ``size``; reused across calls when small: fresh large allocations are
        page-faulted in on every call, which costs as much as the work."""
        buf = self._buffers.get(key)
        shape = (1, 1, *size) if len(size) == 2 else tuple(size)
        if buf is not None and buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device:
            return buf
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        if buf.numel() <= _KEEP_BUFFER:
            self._buffers[key] = buf
        return buf


@functools.lru_cache(maxsize=32)
def _band(
    n_in: int, stages: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chain of bilinear resizes along one axis (``F.interpolate``, align_corners=False), each
    stage ``(size, kept)`` resizing to ``size`` and keeping the first ``kept``, as one linear map
    from ``n_in`` inputs to the last ``kept`` outputs, cut into blocks of ``_BLOCK`` outputs.

    Every output reads a few neighbouring inputs (bilinear taps compose into a band), so a block
    is a small dense ``(_BLOCK, K)`` matrix on ``K`` consecutive inputs. Returns the weights
    ``(nb, _BLOCK, K)`` (of ``dtype``; rows past the end are zero) and the input indices ``(nb, K)``.
    Composed in float64 from the kernel's taps (float32 ones unless ``dtype`` is float64); cached
    per size (read-only tensors)."""
    with torch.inference_mode(False):
        m = torch.eye(n_in, dtype=torch.float64)
        n = n_in
        for size, kept in stages:
            taps = _linear_taps(n, size, torch.device("cpu"), torch.float64 if dtype == torch.float64 else torch.float32)
            i0, i1, w0, w1 = (t[:kept] for t in taps)
            m = w0.double()[:, None] * m[i0] + w1.double()[:, None] * m[i1]  # (kept, n_in)
            n = kept
        nb, b = -(-n // _BLOCK), _BLOCK
        nz = torch.zeros((nb * b, n_in), dtype=torch.bool)
        nz[:n] = m != 0
        cols = torch.arange(n_in)
        first = torch.where(nz, cols, n_in).view(nb, b, n_in).amin((1, 2))
        last = torch.where(nz, cols, -1).view(nb, b, n_in).amax((1, 2))
        k = int((last - first).max()) + 1
        idx = first.clamp(max=n_in - k)[:, None] + torch.arange(k)  # (nb, K)
        rows = torch.arange(nb * b).clamp(max=n - 1).view(nb, b)
        weights = m[rows[:, :, None], idx[:, None, :]]
        weights.view(-1, k)[n:] = 0
        return weights.to(device, dtype), idx.to(device)


def banded_threshold(
    x: torch.Tensor,
    row_stages: tuple[tuple[int, int], ...],
    col_stages: tuple[tuple[int, int], ...],
    threshold: float,
    out: torch.Tensor,
    buffer=None,
) -> torch.Tensor:
    """``out (H, W) = resize(x (h, w)) > threshold`` where ``resize`` is the chain of bilinear
    resizes and crops given per axis as in :func:`_band`. Computed as two banded products
    (columns, then rows in cache-sized chunks of blocks that are thresholded as they come), which
    does a few multiply-adds per output pixel and no full-size float plane: several times faster
    on a CPU than the two ``upsample_bilinear2d`` passes. Equal to them except for values within
    float rounding of the threshold (the taps are composed in float64). ``buffer(key, shape,
    like)``: where the row chunks go (default: fresh)."""
    wr, ir = _band(x.shape[0], row_stages, x.device, x.dtype)
    wc, ic = _band(x.shape[1], col_stages, x.device, x.dtype)
    H, W = out.shape
    # columns: (nbc, h, K) @ (nbc, K, B) -> (h, nbc * B), the first W kept
    # (gathers by index_select: ~3x faster than advanced indexing on a CPU)
    xc = torch.index_select(x, 1, ic.flatten()).view(x.shape[0], *ic.shape).transpose(0, 1)
    t = torch.bmm(xc, wc.transpose(1, 2)).transpose(0, 1).reshape(x.shape[0], -1)[:, :W]
    nb, b, k = wr.shape
    step = max(1, _CHUNK // (b * W))
    shape = (min(step, nb), b, W)
    chunk = buffer("banded", shape, t) if buffer is not None else t.new_empty(shape)
    for s in range(0, nb, step):
        e = min(nb, s + step)
        rows = torch.index_select(t, 0, ir[s:e].flatten()).view(e - s, k, W)
        y = torch.bmm(wr[s:e], rows, out=chunk[: e - s]).view(-1, W)[: H - s * b]
        _greater(y, threshold, out[s * b : s * b + y.shape[0]])
    return out


def _greater(x: torch.Tensor, threshold: float, out: torch.Tensor) -> None:
    """``out = x > threshold`` (float32 comparison, as torch does it). On a CPU through numpy, whose
    comparison loop is ~3x faster than ``torch.gt`` there (0.12 vs 0.34 ms per 1024 x 1024 plane on
    2 threads; a third of the post-processing's time)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        np.greater(x.numpy(), np.float32(threshold), out=out.numpy())
    else:
        torch.gt(x, threshold, out=out)


def _mostly_decided(low: torch.Tensor, threshold: float, block: int = 4) -> bool:
    """Whether at most a quarter of the ``block`` x ``block`` cells of low-res logits ``(h, w)``
    straddle the threshold, i.e. the mask is made of regions, not noise (random weights)."""
    h, w = low.shape
    pos = (low[: h - h % block, : w - w % block] > threshold).reshape(h // block, block, w // block, block)
    n = pos.sum((1, 3))
    return bool(((n > 0) & (n < block * block)).float().mean() <= _MAX_MIXED) if n.numel() else False


@functools.lru_cache(maxsize=32)
def _linear_taps(
    n_in: int, n_out: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """PyTorch's bilinear (align_corners=False) source taps along one axis: indices i0, i1 (n_out,)
    and weights w0, w1 (``dtype``: float32 as for float32 data, float64 as for float64 data), as
    ``upsample_bilinear2d`` computes them. Cached per size: normal (not inference-mode) tensors,
    read-only."""
    with torch.inference_mode(False):
        scale = torch.tensor(n_in, dtype=dtype) / n_out
        src = (scale * (torch.arange(n_out, dtype=dtype) + 0.5) - 0.5).clamp_(min=0)
        i0 = src.long()
        i1 = i0 + (i0 < n_in - 1).long()
        w1 = (src - i0).clamp_(0, 1)
        return i0.to(device), i1.to(device), (1 - w1).to(device), w1.to(device)


def resize_threshold(
    x: torch.Tensor, stages: list[tuple[tuple[int, int], tuple[int, int]]], threshold: float
) -> torch.Tensor | None:
    """``resize(x) > threshold`` for one plane ``x (h, w)``, where ``resize`` is a chain of bilinear
    resizes (``F.interpolate``, align_corners=False) each followed by a top-left crop: ``stages`` is
    ``[(size, kept), ...]``. Returns the ``(H, W)`` bool mask of the last ``kept``, computing the
    interpolation only where the answer is in doubt.

    Every output pixel is a convex combination of source pixels, so where all the source pixels
    that a tile of output reads are above the threshold (or all at or below it) the whole tile is
    decided without arithmetic; the other tiles (along mask edges) are interpolated with the
    kernel's taps and weights, stage by stage on the tile's source patch. Results equal the full
    computation except for values within float rounding of the threshold. Returns None when more
    than a quarter of the tiles are in doubt (a noisy plane, e.g. from random weights): then the
    plain path is faster.
    """
    dev = x.device
    h, w = x.shape
    rows: list[tuple[torch.Tensor, ...]] = []  # per stage: taps (i0, i1, w0, w1) of the kept outputs
    cols: list[tuple[torch.Tensor, ...]] = []
    n_r, n_c = h, w
    for size, kept in stages:
        rows.append(tuple(t[: kept[0]] for t in _linear_taps(n_r, size[0], dev)))
        cols.append(tuple(t[: kept[1]] for t in _linear_taps(n_c, size[1], dev)))
        n_r, n_c = kept
    H, W, T = n_r, n_c, _TILE
    ty, tx = -(-H // T), -(-W // T)
    t = torch.arange(T, device=dev)
    yy = (torch.arange(ty, device=dev)[:, None] * T + t).clamp_(max=H - 1)  # (ty, T) output rows
    xx = (torch.arange(tx, device=dev)[:, None] * T + t).clamp_(max=W - 1)
    a0, a1 = _source_range(yy[:, 0], yy[:, -1], rows)
    b0, b1 = _source_range(xx[:, 0], xx[:, -1], cols)
    # integral image of positives: count over any source rectangle in O(1)
    integ = torch.zeros((h + 1, w + 1), dtype=torch.int32, device=dev)
    integ[1:, 1:] = (x > threshold).int().cumsum(0).cumsum(1)
    count = integ[a1][:, b1] - integ[a0][:, b1] - integ[a1][:, b0] + integ[a0][:, b0]
    area = (a1 - a0)[:, None] * (b1 - b0)[None, :]
    mixed = ((count > 0) & (count < area)).nonzero()  # (n, 2) tiles along an edge
    if len(mixed) > _MAX_MIXED * ty * tx:
        return None
    out = (count > 0)[:, None, :, None].expand(ty, T, tx, T).reshape(ty * T, tx * T)
    if len(mixed):
        val = _interpolate_tiles(x, yy[mixed[:, 0]], xx[mixed[:, 1]], rows, cols)  # (n, T, T)
        tiles = out.view(ty, T, tx, T).permute(0, 2, 1, 3)
        tiles[mixed[:, 0], mixed[:, 1]] = val > threshold
    return out[:H, :W]


def _source_range(first: torch.Tensor, last: torch.Tensor, taps: list[tuple[torch.Tensor, ...]]):
    """Output index ranges [first, last] (per tile) -> source ranges [lo, hi) through all stages."""
    for i0, i1, _, _ in reversed(taps):
        first, last = i0[first], i1[last]
    return first, last + 1


def _interpolate_tiles(x: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor, rows, cols) -> torch.Tensor:
    """Values of the resize chain at output rows ``yy (n, T)`` x columns ``xx (n, T)`` of n tiles:
    per stage, (rows out x rows in) tap matrix @ patch @ (cols in x cols out), columns first as
    the kernel does. Each stage reads a window of the previous one starting at the window origin."""
    wins_r = _windows(yy, rows)  # per stage: (origin (n,), size, local indices of its outputs)
    wins_c = _windows(xx, cols)
    (r_org, r_len, _), (c_org, c_len, _) = wins_r[0], wins_c[0]
    ri = (r_org[:, None] + torch.arange(r_len, device=x.device)).clamp_(max=x.shape[0] - 1)
    ci = (c_org[:, None] + torch.arange(c_len, device=x.device)).clamp_(max=x.shape[1] - 1)
    val = x[ri[:, :, None], ci[:, None, :]]  # (n, r_len, c_len) source patch
    for k, ((i0, i1, w0, w1), (j0, j1, v0, v1)) in enumerate(zip(rows, cols, strict=True)):
        r_out, c_out = wins_r[k][2], wins_c[k][2]  # (n, m) output indices of this stage (global)
        ro, co = wins_r[k][0][:, None], wins_c[k][0][:, None]
        ry = _tap_matrix(i0[r_out] - ro, i1[r_out] - ro, w0[r_out], w1[r_out], val.shape[1])
        cx = _tap_matrix(j0[c_out] - co, j1[c_out] - co, v0[c_out], v1[c_out], val.shape[2])
        val = ry @ (val @ cx.transpose(1, 2))
    return val


def _windows(out_idx: torch.Tensor, taps) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """For each stage (first to last): the origin (n,) and length of the source window that the
    stage reads, and the stage's output indices (n, m) (global in that stage's output)."""
    wins = []
    idx = out_idx
    for i0, i1, _, _ in reversed(taps):
        org = i0[idx[:, 0]]
        length = int((i1[idx[:, -1]] - org).max()) + 1
        wins.append((org, length, idx))
        n_in = int(i1.max()) + 1
        idx = (org[:, None] + torch.arange(length, device=idx.device)).clamp_(max=n_in - 1)
    return wins[::-1]


def _tap_matrix(i0: torch.Tensor, i1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, n: int) -> torch.Tensor:
    """(k, T) local tap indices and weights -> (k, T, n) sparse interpolation rows."""
    m = torch.zeros((*i0.shape, n), dtype=w0.dtype, device=w0.device)
    m.scatter_add_(2, i0[..., None], w0[..., None])
    return m.scatter_add_(2, i1[..., None], w1[..., None])
