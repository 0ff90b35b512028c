"""Shared fixtures (helpers that test modules import live in _synthetic.py and _reference.py)."""

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



@pytest.fixture
def tiny_sam():
    """A fresh tiny random-weight Sam (see ``make_tiny_sam``), for viewer/widget tests."""
    from _synthetic import make_tiny_sam

    return make_tiny_sam()
