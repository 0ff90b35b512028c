"""Synthetic stacks with exact ground truth, and a tiny random-weight SAM for mechanics tests.

- :func:`ellipsoid_volume`: bright ellipsoids on a noisy background, (Z, Y, X) uint8 image and
  (Z, Y, X) int32 labels (0 = background, 1..n = objects; the labels are the exact voxel sets
  the image was drawn from, so Dice against them is exact).
- :func:`moving_disks`: a (T, Y, X) time series of disks moving along straight lines.
- :func:`balls_volume`: bright balls at given centres (for prompts at known (slice, row, col)).
- :func:`tiny_sam`: a SAM with a 1-layer conv encoder (img_size 128, 8x8 grid, 32 channels) and a
  1-layer decoder: random weights, a few ms per slice; for tests of plumbing, never of quality.

Reused by tests/test_embeddings.py, tests/test_volume.py and bench/.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def ellipsoid_volume(
    shape: tuple[int, int, int] = (24, 64, 64),
    n_objects: int = 3,
    radii: tuple[float, float] = (4.0, 10.0),
    noise: float = 12.0,
    seed: int = 0,
    rgb: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Non-overlapping random ellipsoids on noise.

    Args:
        shape: (Z, Y, X) voxels.
        n_objects: number of ellipsoids (fewer when they do not fit without overlap).
        radii: (min, max) semi-axis length in voxels, drawn per axis.
        noise: standard deviation of the Gaussian background noise (grey levels).
        seed: RNG seed; the same seed gives the same volume.
        rgb: return a (Z, Y, X, 3) image (objects tinted) instead of (Z, Y, X).

    Returns:
        image (Z, Y, X[, 3]) uint8, labels (Z, Y, X) int32, and per object a dict with
        ``id``, ``center`` (z, y, x) and ``radii`` (rz, ry, rx).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    info: list[dict] = []
    for _ in range(n_objects * 50):
        if len(info) == n_objects:
            break
        r = rng.uniform(*radii, size=3)
        r[0] = min(r[0], shape[0] / 2 - 1)
        c = np.array([rng.uniform(r[i] + 1, shape[i] - r[i] - 1) for i in range(3)])
        lo = np.maximum(np.floor(c - r).astype(int) - 2, 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 3, shape)
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d2 = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        box = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        halo = (
            ((z - c[0]) / (r[0] + 2)) ** 2 + ((y - c[1]) / (r[1] + 2)) ** 2 + ((x - c[2]) / (r[2] + 2)) ** 2
        )
        if (box[halo <= 1] != 0).any():
            continue  # it would touch an earlier ellipsoid: draw again
        inside = d2 <= 1
        oid = len(info) + 1
        box[inside] = oid
        info.append({"id": oid, "center": tuple(float(v) for v in c), "radii": tuple(float(v) for v in r)})
    bright = ndimage.gaussian_filter((labels > 0).astype(np.float32), 0.7) * 140 + 50
    img = bright + rng.normal(0, noise, shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if rgb:
        tint = np.array([1.0, 0.8, 0.6], np.float32)
        image = np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
    return image, labels, info


def moving_disks(
    shape: tuple[int, int, int] = (16, 64, 64), n_objects: int = 2, radius: float = 8.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A (T, Y, X) uint8 time series of disks moving up to 1.5 px per frame, each in its own band of
    rows (they never touch); labels (T, Y, X) int32."""
    rng = np.random.default_rng(seed)
    t_n, h, w = shape
    yy, xx = np.ogrid[:h, :w]
    labels = np.zeros(shape, np.int32)
    band = h / n_objects
    starts = [np.array([band * (i + 0.5), rng.uniform(radius + 2, w - radius - 2)]) for i in range(n_objects)]
    vel = [np.array([0.0, rng.uniform(-1.5, 1.5)]) for _ in range(n_objects)]
    for t in range(t_n):
        for i in range(n_objects):
            cy, cx = np.clip(starts[i] + t * vel[i], radius + 1, (h - radius - 1, w - radius - 1))
            labels[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i + 1
    img = (labels > 0) * 150.0 + 40 + rng.normal(0, 10, shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def balls_volume(
    shape: tuple[int, int, int] = (12, 64, 64),
    centres: tuple[tuple[int, int, int], ...] = ((4, 20, 22), (7, 44, 42)),
    radii: tuple[float, float] = (4.5, 10.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) uint8 image of bright balls (semi-axes ``radii`` = (along z, in y and x)) at ``centres``
    (z, y, x) on a noisy background, and their (Z, Y, X) int32 labels 1..n in the order of ``centres``."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    for k, (cz, cy, cx) in enumerate(centres, start=1):
        labels[((z - cz) / radii[0]) ** 2 + ((y - cy) ** 2 + (x - cx) ** 2) / radii[1] ** 2 <= 1] = k
    img = ndimage.gaussian_filter((labels > 0) * 160.0, (0, 1, 1)) + 30
    img += np.random.default_rng(seed).normal(0, 6, shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def tiny_sam(seed: int = 0, img_size: int = 128):
    """A random-weight ``Sam`` small enough for unit tests (conv encoder, stride 16, 32 channels)."""
    import torch
    from torch import nn

    from napari_sam.models.sam import build_sam

    class _TinyEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.img_size = img_size
            self.proj = nn.Conv2d(3, 32, 16, 16)
            self.mix = nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,S,S) -> (B,32,S/16,S/16)
            return self.mix(torch.nn.functional.gelu(self.proj(x)))

    torch.manual_seed(seed)
    grid = img_size // 16
    return build_sam(
        _TinyEncoder(),
        img_size=img_size,
        embedding_size=(grid, grid),
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_depth=1,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        arch="tiny_test",
    )


def make_tiny_sam(seed: int = 0):
    """A tiny random-weight Sam (256 px input, 16x16 grid, 32-dim decoder): fast on CPU, arbitrary masks."""
    from torch import nn

    from napari_sam.models.sam import build_sam

    class _PatchEncoder(nn.Module):
        """(B, 3, 256, 256) -> (B, 32, 16, 16): one strided conv, SAM's encoder contract."""

        img_size = 256

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, 32, kernel_size=16, stride=16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    torch.manual_seed(seed)
    model = build_sam(
        _PatchEncoder(), img_size=256, embedding_size=(16, 16), prompt_embed_dim=32, mask_in_chans=4,
        decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32, arch="tiny_test",
    )
    model.model_name = "tiny_test"
    return model.eval()
