"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads must not spin: on a shared 2-core machine spinning makes small ops 10-20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_SAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (dsb2018, gonuclear3d); skips when the project is used outside its workplace."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set NAPARI_SAM_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def reference():
    """The official segment_anything package (see tests/_reference.py)."""
    from _reference import official

    return official()


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


@pytest.fixture
def tiny_sam():
    """A fresh tiny random-weight Sam (see ``make_tiny_sam``), for viewer/widget tests."""
    return make_tiny_sam()
