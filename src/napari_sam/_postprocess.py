"""SAM's mask post-processing (low-res logits -> masks at the original image size), the official
arithmetic with less work: only the low-res rows/columns that reach the crop are upsampled, an
identity resize is skipped, and bool masks are made one plane at a time in reused buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# a reused buffer is kept up to this many float elements (64 MiB); larger ones are made per call
_KEEP_BUFFER = 2**24


class MaskUpsampler:
    """``(B, C, 256, 256)`` logits -> ``(B, C, H, W)`` masks for an encoder of side ``img_size``.

    Same numbers as the official ``postprocess_masks`` (bilinear to ``(img_size, img_size)``, crop
    to ``input_size``, bilinear to ``original_size``, align_corners=False) followed by ``> threshold``.
    Not thread-safe (the buffers are shared): one per predictor.
    """

    def __init__(self, img_size: int) -> None:
        self.img_size = int(img_size)
        self._buffers: dict[str, torch.Tensor] = {}

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
        out = torch.empty((b * c, 1, *size), dtype=torch.bool, device=low.device)
        for i in range(b * c):
            x = self._buffer("first", first, low)
            torch._C._nn.upsample_bilinear2d(low[i : i + 1], first, False, *scales, out=x)
            x = x[..., :h, :w]
            if size != (h, w):
                y = self._buffer("final", size, low)
                torch._C._nn.upsample_bilinear2d(x, size, False, None, None, out=y)
                x = y
            torch.gt(x, threshold, out=out[i : i + 1])
        return out.reshape(b, c, *size)

    def _buffer(self, key: str, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """A (1, 1, *size) float buffer of ``like``'s dtype/device, reused across calls when small:
        fresh large allocations are page-faulted in on every call, which costs as much as the work."""
        buf = self._buffers.get(key)
        shape = (1, 1, *size)
        if buf is not None and buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device:
            return buf
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        if size[0] * size[1] <= _KEEP_BUFFER:
            self._buffers[key] = buf
        return buf
