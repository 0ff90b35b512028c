"""Meta's SAM 2.1 (``../shared/reference/sam2``), importable in tests and benchmarks.

The package's ``__init__`` initialises hydra (``hydra-core``, in the ``testing`` extra) and its
Hiera imports ``iopath`` (also there); its image transforms import torchvision, unusable here,
so :mod:`_reference`'s torchvision stand-in (which also covers ``ToTensor``/``Resize``/``Normalize``)
is installed first. Models are built from the official configs with Meta's own builders
(``build_sam2`` / ``build_sam2_video_predictor``, random weights, CPU) and their state dicts saved in
the official checkpoint format (``{"model": state_dict}``).

Only tests and benchmarks use this; the package never imports the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _reference
import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "sam2"
CONFIGS = {  # our registry's architecture names -> Meta's config files
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def available() -> bool:
    return (REFERENCE_DIR / "sam2" / "modeling" / "sam2_base.py").is_file()


def sam2_package():
    """Meta's ``sam2`` package (skips the calling test when the reference or hydra is missing)."""
    if not available():
        pytest.skip(f"Meta's SAM 2 reference not found at {REFERENCE_DIR}")
    pytest.importorskip("hydra", reason="hydra-core is needed to import Meta's sam2 (pip install hydra-core)")
    pytest.importorskip("iopath", reason="iopath is needed by Meta's Hiera (pip install iopath)")
    _reference._install_shim()
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    import sam2

    return sam2


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Add noise to every parameter and float buffer, so that zero-initialised ones (position
    tables, no-memory embeddings, object-pointer projections) take part in a parity test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(torch.randn(t.shape, generator=g) * std)
    return model


def build_reference(arch: str, seed: int = 0, video: bool = False) -> torch.nn.Module:
    """Meta's model for ``arch`` (``SAM2Base``, or ``SAM2VideoPredictor`` with ``video``) on the CPU, in
    eval mode, with random weights (:func:`randomize` d, reproducible from ``seed``)."""
    sam2_package()
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    torch.manual_seed(seed)
    build = build_sam2_video_predictor if video else build_sam2
    return randomize(build(CONFIGS[arch], ckpt_path=None, device="cpu"), seed).eval()


def save_official(model: torch.nn.Module, path: Path) -> Path:
    """Save ``model``'s state dict as an official SAM 2.1 checkpoint (``{"model": state_dict}``)."""
    torch.save({"model": model.state_dict()}, path)
    return path
