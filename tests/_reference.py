"""The official implementation (``segment-anything`` from PyPI), importable without torchvision.

The official ``modeling`` package needs no torchvision, but ``segment_anything/__init__.py``
imports the predictor and automatic mask generator, which import ``torchvision`` for PIL
resizing and for ``batched_nms``. torchvision is not usable on this machine, so this module
installs a minimal stand-in for exactly those three functions before importing the
reference. The stand-ins do what torchvision does:

- ``resize(pil_image, (h, w))`` -> ``pil_image.resize((w, h), BILINEAR)`` (torchvision's PIL path)
- ``to_pil_image(uint8 HWC array)`` -> ``PIL.Image.fromarray``
- ``batched_nms`` / ``box_area``: greedy NMS per category, boxes XYXY, IoU > thresh suppressed.
- ``transforms.ToTensor`` / ``Resize`` / ``Normalize`` (SAM 2's image transforms): HWC uint8 -> CHW
  float in [0, 1]; bilinear resize with antialiasing (torchvision's tensor default); (x - mean) / std.

The shim is only ever used by tests and benchmarks; the package itself has no torchvision.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].float()
    area = _box_area(boxes)
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)] if keep else order[:0]


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return _nms(boxes + offsets[:, None], scores, iou_threshold)


def _resize(img, size, interpolation=None, **_):
    from PIL import Image

    h, w = size
    return img.resize((int(w), int(h)), Image.BILINEAR)


def _to_pil_image(pic, mode=None):
    from PIL import Image

    return Image.fromarray(np.asarray(pic), mode=mode)


class _ToTensor:
    """torchvision's ``ToTensor`` for HWC uint8 arrays: CHW float32 in [0, 1]."""

    def __call__(self, pic) -> torch.Tensor:
        a = np.asarray(pic)
        if a.ndim == 2:
            a = a[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()


class _Resize(torch.nn.Module):
    """torchvision's tensor ``Resize((h, w))``: bilinear with antialiasing (its default since 0.17)."""

    def __init__(self, size, interpolation=None, max_size=None, antialias=True) -> None:
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )[0]


class _Normalize(torch.nn.Module):
    """torchvision's ``Normalize(mean, std)`` of a CHW tensor."""

    def __init__(self, mean, std, inplace=False) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


def _install_shim() -> None:
    try:  # a working torchvision is used as it is
        import torchvision  # noqa: F401

        return
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = _batched_nms
    boxes.box_area = _box_area
    boxes.nms = _nms
    ops.boxes = boxes
    ops.batched_nms = _batched_nms
    ops.nms = _nms
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = _resize
    functional.to_pil_image = _to_pil_image
    transforms.functional = functional
    transforms.ToTensor = _ToTensor  # (SAM 2's image transforms)
    transforms.Resize = _Resize
    transforms.Normalize = _Normalize
    tv.ops = ops
    tv.transforms = transforms
    for name, mod in {
        "torchvision": tv,
        "torchvision.ops": ops,
        "torchvision.ops.boxes": boxes,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }.items():
        sys.modules[name] = mod


def official():
    """Return the official ``segment_anything`` package (importing it with the shim if needed)."""
    _install_shim()
    import segment_anything

    return segment_anything
