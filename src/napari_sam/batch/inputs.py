"""Batch inputs: which files an ``INPUT...`` list names, how each is read, and where its labels go.

An input is a folder (its image files, not recursive, sorted by name), a glob pattern (``data/*.tif``), a
list file (``.txt`` / ``.lst``: one path per line, relative to the list file, ``#`` comments) or an image
file. Image files: ``.tif``/``.tiff`` (also ``.ome.tif``), ``.png``, ``.jpg``/``.jpeg`` and ``.zarr``
(an array, or an OME-Zarr group whose first multiscale level is read). Zarr data is opened lazily: a
volume is read slice by slice, never whole.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import SamUserError

__all__ = [
    "IMAGE_SUFFIXES", "discover", "is_volume", "output_path", "peek_shape", "read_image", "read_scale", "stem",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")
LIST_SUFFIXES = (".txt", ".lst")
_DOUBLE = (".ome.tif", ".ome.tiff", ".ome.zarr")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.suffix.lower() == ".zarr")


def _read_list(path: Path) -> list[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def discover(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """The image files named by ``inputs`` (folders, globs, list files, files), in order, without repeats.

    A path that does not exist is kept (it is reported as a failed input, the others still run); a
    folder or pattern with no image in it raises :class:`~napari_sam.errors.SamUserError`.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir() and path.suffix.lower() != ".zarr":
            hits = sorted(p for p in path.iterdir() if _is_image(p))
            what = f"folder {path}"
        elif any(ch in text for ch in "*?[") and not path.exists():
            hits = sorted(Path(p) for p in glob.glob(str(path)) if _is_image(Path(p)))
            what = f"pattern {text!r}"
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            hits = _read_list(path)
            what = f"list file {path}"
        else:
            hits, what = [path], ""
        if not hits:
            raise SamUserError(
                f"the {what} holds no image ({', '.join(IMAGE_SUFFIXES)}); name image files, folders of them, "
                f"glob patterns or a list file (one path per line)"
            )
        found.extend(hits)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def stem(path: Path) -> str:
    """``a.png`` -> ``a``; ``b.ome.tif`` / ``c.ome.zarr`` -> ``b`` / ``c``."""
    name = path.name
    for double in _DOUBLE:
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def output_path(path: Path, output: Path, volume: bool) -> Path:
    """``DIR/a_labels.tif`` for a 2D input ``a.png``; ``DIR/a_labels.zarr`` for a stack or volume."""
    return output / f"{stem(path)}_labels{'.zarr' if volume else '.tif'}"


def _zarr_array(path: Path) -> Any:
    """The array of a zarr store: the store itself, or an OME-Zarr group's first multiscale level."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    ms = _multiscales(node)
    if ms:
        return node[ms[0]["datasets"][0]["path"]]
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise SamUserError(f"{path}: a zarr group without arrays or OME-Zarr multiscales metadata")
    return node[arrays[0]]


def _multiscales(group: Any) -> list[dict]:
    attrs = dict(group.attrs)
    return attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales") or []


def read_image(path: Path) -> Any:
    """The image data of ``path``: a numpy array, or a lazy zarr array for ``.zarr`` (read by slices)."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise SamUserError(f"{path}: not a supported image file ({', '.join(IMAGE_SUFFIXES)})")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix == ".zarr":
        return _zarr_array(path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from skimage import io

    return np.asarray(io.imread(path))


def read_scale(path: Path) -> list[dict] | None:
    """The first level's ``coordinateTransformations`` of an OME-Zarr input (copied to its labels), else None."""
    if path.suffix.lower() != ".zarr":
        return None
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return None
    ms = _multiscales(node)
    if not ms:
        return None
    found = ms[0]["datasets"][0].get("coordinateTransformations")
    return json.loads(json.dumps(found)) if found else None


def peek_shape(path: Path) -> tuple[int, ...] | None:
    """The data shape of ``path`` from its header (tif, zarr) without reading pixels; None when unknown
    (png/jpg are 2D; an unreadable file fails later, in its task)."""
    try:
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tuple(int(s) for s in tif.series[0].shape)
        if suffix == ".zarr":
            return tuple(int(s) for s in _zarr_array(path).shape)
    except Exception:
        return None
    return None


def is_volume(shape: Iterable[int]) -> bool:
    """A 3D stack (n, H, W) or a colour one (n, H, W, 3|4); 2D images are (H, W) or (H, W, 3|4)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return False
    if len(shape) == 3:
        return shape[-1] not in (3, 4)
    if len(shape) == 4 and shape[-1] in (3, 4):
        return True
    raise SamUserError(
        f"image of shape {shape}: expected (H, W), (H, W, 3|4), a stack (n, H, W) or (n, H, W, 3|4); "
        f"split time series (T, Z, Y, X) into one input per time point"
    )
