"""Batch outputs, written so that a crash never leaves a half-written file under the final name.

Every output is first written under a hidden temporary name in the same folder (``.a_labels.tif.<id>.part``)
and renamed into place when complete (a rename is atomic within one file system). An output that
exists is therefore finished: a rerun skips it (``overwrite`` redoes it). Leftover ``.part`` files of an
interrupted run are removed by the next run over the same folder.

- 2D labels: ``a_labels.tif`` (uint16 when the ids fit, else uint32, zlib-compressed);
- stacks and volumes: ``a_labels.zarr``, an OME-Zarr (0.5, zarr v3) image group with one level ``0``
  of int32 labels chunked one slice per chunk, carrying the input's scale when it has one;
- ``summary.csv``: one row per input (:data:`SUMMARY_FIELDS`).
"""

from __future__ import annotations

import csv
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUMMARY_FIELDS", "VolumeWriter", "clean_partials", "is_finished", "read_summary", "write_labels_tif",
    "write_summary",
]

#: columns of ``summary.csv``; ``status`` is ``done``, ``skipped`` (the output existed) or ``failed``
SUMMARY_FIELDS = ("input", "output", "status", "objects", "seconds", "message")
_PART = ".part"


def _part_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{_PART}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path) -> None:
    """Move finished ``tmp`` to ``path``; an existing output (``overwrite``) is moved aside first."""
    if path.exists():
        old = _part_name(path)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def is_finished(path: Path) -> bool:
    """True when ``path`` exists: outputs appear under their name only once complete."""
    return Path(path).exists()


def clean_partials(folder: Path) -> int:
    """Remove the ``.part`` leftovers of interrupted runs in ``folder``; returns how many."""
    n = 0
    if Path(folder).is_dir():
        for p in Path(folder).glob(f".*{_PART}"):
            _remove(p)
            n += 1
    return n


def labels_dtype(top: int) -> np.dtype:
    """The smallest of uint16 / uint32 that holds ids up to ``top``."""
    return np.dtype(np.uint16 if top < 2**16 else np.uint32)


def write_labels_tif(labels: np.ndarray, path: Path) -> None:
    """Write 2D (or small 3D) labels to ``path`` atomically."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part_name(path)
    try:
        data = np.asarray(labels).astype(labels_dtype(int(np.max(labels, initial=0))), copy=False)
        tifffile.imwrite(tmp, data, compression="zlib")
        _replace(tmp, path)
    finally:
        _remove(tmp)


class VolumeWriter:
    """A (n, H, W) int32 labels OME-Zarr written slice by slice under a temporary name.

    ``with VolumeWriter(path, shape, scale) as w: w[z] = labels`` renames the store into place when the
    block ends without an error and removes it otherwise. ``scale``: the input's first-level
    ``coordinateTransformations`` (OME-Zarr), kept when its length fits the labels' 3 axes.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], scale: list[dict] | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.scale = scale
        self.tmp = _part_name(self.path)
        self._array: Any = None

    def __enter__(self) -> VolumeWriter:
        import zarr

        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(self.tmp), mode="w")
        transforms = self.scale
        if not transforms or any(len(t.get("scale", t.get("translation", ()))) != 3 for t in transforms):
            transforms = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
        axes = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
            "image-label": {"version": "0.5"},
        }
        n, h, w = self.shape
        self._array = group.create_array("0", shape=self.shape, dtype="int32", chunks=(1, h, w), fill_value=0)
        return self

    def __setitem__(self, z: int, labels: np.ndarray) -> None:
        self._array[z] = np.asarray(labels, dtype=np.int32)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                _replace(self.tmp, self.path)
        finally:
            _remove(self.tmp)


def read_summary(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier ``summary.csv`` by input ({} when there is none or it is unreadable)."""
    try:
        with open(path, newline="") as f:
            return {row["input"]: row for row in csv.DictReader(f) if "input" in row}
    except (OSError, csv.Error, KeyError):
        return {}


def write_summary(rows: Iterable[dict[str, Any]], path: Path) -> None:
    """Write ``summary.csv`` atomically (columns :data:`SUMMARY_FIELDS`)."""
    path = Path(path)
    tmp = _part_name(path)
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in SUMMARY_FIELDS})
        _replace(tmp, path)
    finally:
        _remove(tmp)
