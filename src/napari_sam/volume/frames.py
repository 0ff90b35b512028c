"""Image features of the slices of a stack for SAM 2, made slice by slice on demand.

:class:`SliceFeatures` reads slice ``z`` of an ``(n, H, W)`` or ``(n, H, W, 3|4)`` array-like along
``axis`` (numpy, dask, zarr: only that slice is read), turns it into SAM 2's input (RGB uint8 with
the stack's contrast limits -> [0, 1] -> 1024 x 1024 bilinear with antialias -> normalised by
ImageNet mean/std; no padding: SAM 2 squashes the image), runs ``model.forward_image`` and keeps
the ``cache_size`` most recently used slices. A ``features`` callable (``z -> backbone_out``, the
dict ``forward_image`` returns) replaces the encoder: :func:`store_features` reads an
``EmbeddingStore`` of the same model (the slices the user already browsed are not encoded again,
and those encoded for tracking stay in the store, within its budget and disk cache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.images import PERCENTILES, to_sam_image
from napari_sam.errors import SamUserError

__all__ = ["SAM2_MEAN", "SAM2_STD", "SliceFeatures", "preprocess_sam2", "store_features"]

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)

#: ``z -> backbone_out``: {"vision_features": (1, C, H, W), "vision_pos_enc": [...], "backbone_fpn": [...]}
FeatureFn = Callable[[int], dict[str, Any]]


def preprocess_sam2(rgb: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, image_size, image_size)`` float32, SAM 2's normalised input."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(SAM2_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(SAM2_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def store_features(store: Any) -> FeatureFn:
    """``z -> backbone_out`` of slice ``z`` from ``store`` (an ``EmbeddingStore`` whose predictor
    holds the SAM 2 model that tracks): ``store.get(z)`` (memory, then disk, then the encoder, the
    result kept in the store) turned back into ``forward_image``'s output. The store keeps what
    ``SAM2ImagePredictor`` keeps: the stride-16 map plus ``no_mem_embed`` (subtracted again here),
    the projected stride-4 and stride-8 maps, all in float16 (so the masks may differ from those
    of float32 features in a few boundary pixels); the position encodings depend on the grid only
    and are made by the image encoder's own sine encoding."""
    model = store.predictor.model
    if not hasattr(model, "forward_image"):
        raise SamUserError(f"the embedding store holds {type(model).__name__} embeddings, not SAM 2's")
    pos_enc = model.image_encoder.neck.position_encoding

    def features(z: int) -> dict[str, Any]:
        emb = store.get(z)
        top = emb.features
        if model.directly_add_no_mem_embed:
            top = top - model.no_mem_embed.detach().view(1, -1, 1, 1).to(top)
        fpn = [*(emb.high_res or ()), top]
        pos = [pos_enc(x).to(x.dtype) for x in fpn]
        return {"vision_features": top, "vision_pos_enc": pos, "backbone_fpn": fpn}

    return features


class SliceFeatures:
    """Backbone features of the slices of ``volume`` along ``axis``, a few kept in memory.

    Args:
        model: a SAM 2 model (``forward_image``, ``_prepare_backbone_features``, ``image_size``).
        volume: ``(n, H, W)`` or ``(n, H, W, 3|4)`` array-like, ``n`` along ``axis``.
        axis: the slice axis (z or t).
        features: ``z -> backbone_out`` used instead of the encoder (None: ``model.forward_image``).
        cache_size: slices kept (least recently used dropped first); at least 1.
        contrast_limits: ``(low, high)`` for non-uint8 data; None: the (0.1, 99.9) percentiles of up
            to 16 evenly spaced slices, the same for every slice.
        rgb: whether the last axis is colour; None infers it (4-D with 3 or 4 channels last).
    """

    def __init__(
        self,
        model: Any,
        volume: Any,
        axis: int = 0,
        *,
        features: FeatureFn | None = None,
        cache_size: int = 2,
        contrast_limits: tuple[float, float] | None = None,
        rgb: bool | None = None,
    ) -> None:
        shape = tuple(int(s) for s in getattr(volume, "shape", ()))
        self.rgb = bool(len(shape) == 4 and shape[-1] in (3, 4)) if rgb is None else bool(rgb)
        if len(shape) != 3 + self.rgb:
            raise SamUserError(
                f"expected a (n, H, W) or (n, H, W, 3|4) stack, got shape {shape}; for (T, Z, Y, X) data pass data[t]"
            )
        nd = len(shape) - self.rgb
        if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -nd <= axis < nd:
            raise SamUserError(f"axis {axis!r} is out of range for a stack of shape {shape}: use 0..{nd - 1}")
        self.model, self.volume, self.axis = model, volume, int(axis) % nd
        self.n = shape[self.axis]
        hw = [s for i, s in enumerate(shape[:nd]) if i != self.axis]
        self.slice_shape: tuple[int, int] = (hw[0], hw[1])
        self.features, self.cache_size = features, max(1, int(cache_size))
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.stats = {"computed": 0, "hits": 0}
        dtype = np.dtype(volume.dtype)
        if contrast_limits is None and dtype not in (np.uint8, np.bool_) and features is None:
            picks = np.unique(np.linspace(0, self.n - 1, min(self.n, 16)).round().astype(int))
            sample = np.concatenate([self.slice(int(i)).reshape(-1) for i in picks]).astype(np.float64)
            sample = sample[np.isfinite(sample)]
            if sample.size:
                contrast_limits = tuple(float(v) for v in np.percentile(sample, PERCENTILES))
        self.contrast_limits = contrast_limits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check(self, z: Any) -> int:
        """Slice index ``z`` as an int in ``0..n-1`` (negative counts from the end), else SamUserError."""
        if isinstance(z, bool) or not isinstance(z, int | np.integer):
            raise SamUserError(f"a slice index must be an integer, got {z!r}")
        if not -self.n <= int(z) < self.n:
            raise SamUserError(
                f"slice {int(z)} is out of range: the stack has {self.n} slices along axis {self.axis} "
                f"(0..{self.n - 1})"
            )
        return int(z) % self.n

    def slice(self, z: int) -> np.ndarray:
        """Slice ``z`` as a numpy array, ``(H, W)`` or ``(H, W, 3|4)``."""
        return np.asarray(self.volume[(slice(None),) * self.axis + (int(z),)])

    def image(self, z: int) -> torch.Tensor:
        """SAM 2's input for slice ``z``: ``(1, 3, image_size, image_size)`` on the model's device."""
        rgb = to_sam_image(self.slice(z), contrast_limits=self.contrast_limits, rgb=self.rgb)
        return preprocess_sam2(rgb, int(self.model.image_size), self.device)

    def backbone(self, z: int) -> dict[str, Any]:
        """``forward_image``'s output for slice ``z`` (batch 1), from the cache when there."""
        z = self.check(z)
        if z in self._cache:
            self._cache.move_to_end(z)
            self.stats["hits"] += 1
            return self._cache[z]
        out = self.features(z) if self.features is not None else self.model.forward_image(self.image(z))
        self.stats["computed"] += 1
        self._cache[z] = out
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def get(self, z: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Flattened features of slice ``z``: per level ``(HW, 1, C)`` features and position
        encodings, and ``(H, W)`` sizes (``model._prepare_backbone_features``)."""
        out = self.backbone(z)
        backbone = {"backbone_fpn": list(out["backbone_fpn"]), "vision_pos_enc": list(out["vision_pos_enc"])}
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone)
        return feats, pos, sizes

    def clear(self) -> None:
        self._cache.clear()
