"""Prompt files of ``--mode prompts`` and ``--mode volume``: points and boxes per image, in napari's (row, col)
order, on one slice of a volume or on a 2D image.

Coordinates are pixels of the image (of the slice, for a volume), (row, col) as napari shows them (row 0 at
the top); they are turned into SAM's (x, y) in one place (:mod:`napari_sam.viewer.slicing`). Each object
becomes one label id, numbered 1, 2, ... in the order the objects first appear in the file.

CSV (header required; one row per point or box; ``label`` 1 positive, 0 negative, default 1; ``slice`` only
for volumes, where it is required)::

    image,object,type,row,col,row1,col1,label
    a.png,1,point,120,88,,,1
    a.png,1,point,130,95,,,0
    a.png,2,box,10,20,40,60,
    b.tif,1,box,5,5,50,70,

A box's ``row, col`` is one corner, ``row1, col1`` the opposite one. For a volume (``--mode volume``) each
row names its ``slice`` (0-based index along the first axis); an object with rows on several slices has
one keyframe per slice, and ``segment_volume`` carries it through the volume from all of them::

    image,object,slice,type,row,col,row1,col1,label
    vol.tif,1,3,point,20,22,,,1
    vol.tif,1,9,point,21,20,,,1
    vol.tif,2,6,box,34,34,54,54,

JSON: ``{image: [object, ...]}``, each object ``{"points": [[row, col], ...], "labels": [1, 0],
"box": [row0, col0, row1, col1]}`` (points and/or a box; ``labels`` default to all positive)::

    {"a.png": [{"points": [[120, 88], [130, 95]], "labels": [1, 0]}, {"box": [10, 20, 40, 60]}]}

and for a volume with ``"slice"``; entries with the same ``"object"`` value are keyframes of one object
(an entry without ``"object"`` is an object of its own)::

    {"vol.tif": [{"object": 1, "slice": 3, "points": [[20, 22]]}, {"object": 1, "slice": 9, "points": [[21, 20]]},
                 {"object": 2, "slice": 6, "box": [34, 34, 54, 54]}]}

The ``image`` key is an input's file name (``a.png``), its name without the suffix (``a``) or its path as
given on the command line; rows under any of these belong to that input. A slice is refused for a 2D
image; a volume's prompt must name a slice in range and lie on the slice (``-0.5 <= row <= H - 0.5``,
``-0.5 <= col <= W - 0.5``: napari's pixel extents); either failure fails that input only.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import SamUserError
from napari_sam.viewer.slicing import box_rc_to_xy, rc_to_xy
from napari_sam.volume.result import Prompt

__all__ = ["ObjectPrompt", "PromptedObject", "image_prompts", "prompts_for", "read_prompts", "segment_prompts",
           "volume_seeds"]

#: one object on one image or slice: (points (N, 2) (row, col) or None, labels (N,) or None,
#: box (row0, col0, row1, col1) or None)
ObjectPrompt = tuple[list[list[float]] | None, list[int] | None, list[float] | None]


@dataclass
class PromptedObject:
    """One object of a prompts file: its name there and its prompts per slice (key None: no slice given)."""

    name: str
    frames: dict[int | None, ObjectPrompt] = field(default_factory=dict)


def _slice_value(value: Any) -> int | None:
    """A slice index from a CSV cell or a JSON value: None when empty, else an int (ValueError otherwise)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"slice must be a whole number, not {value!r}")
    try:
        return int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"slice must be a whole number, not {value!r}") from None


def _csv(path: Path) -> dict[str, list[PromptedObject]]:
    parts: dict[str, dict[str, dict[int | None, dict[str, Any]]]] = {}  # image -> object -> slice -> prompts
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"image", "object", "type", "row", "col"}
        if not need <= set(reader.fieldnames or ()):
            raise SamUserError(
                f"{path}: a prompts CSV needs the columns image,object,type,row,col (and row1,col1 for boxes, "
                f"label for points, slice for volumes); found {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                z = _slice_value(row.get("slice"))
                frames = parts.setdefault(row["image"], {}).setdefault(row["object"], {})
                part = frames.setdefault(z, {"points": [], "labels": [], "box": None})
                kind = row["type"].strip().lower()
                rc = [float(row["row"]), float(row["col"])]
                if kind == "point":
                    part["points"].append(rc)
                    part["labels"].append(int(row.get("label") or 1))
                elif kind == "box":
                    part["box"] = rc + [float(row["row1"]), float(row["col1"])]
                else:
                    raise ValueError(f"type must be 'point' or 'box', not {row['type']!r}")
            except (TypeError, ValueError) as exc:
                raise SamUserError(f"{path}, line {line}: {exc}") from None
    return {
        image: [
            PromptedObject(name, {z: (p["points"] or None, p["labels"] or None, p["box"]) for z, p in frames.items()})
            for name, frames in objs.items()
        ]
        for image, objs in parts.items()
    }


def _json(path: Path) -> dict[str, list[PromptedObject]]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SamUserError(f"{path}: a prompts JSON is an object {{image: [objects]}}, not {type(data).__name__}")
    out: dict[str, list[PromptedObject]] = {}
    for image, objs in data.items():
        parsed: dict[str, PromptedObject] = {}
        for k, o in enumerate(objs):
            if not isinstance(o, dict) or not ({"points", "box"} & set(o)):
                raise SamUserError(f"{path}: object {k} of {image!r} needs 'points' and/or 'box', got {o!r}")
            try:
                z = _slice_value(o.get("slice"))
            except ValueError as exc:
                raise SamUserError(f"{path}: object {k} of {image!r}: {exc}") from None
            name = str(o["object"]) if "object" in o else f"#{k}"
            obj = parsed.setdefault(("=" if "object" in o else "#") + name, PromptedObject(name))
            if z in obj.frames:
                where = "without a slice" if z is None else f"on slice {z}"
                raise SamUserError(f"{path}: object {name!r} of {image!r} has two entries {where}: merge them into one")
            pts = o.get("points")
            labels = o.get("labels", None if pts is None else [1] * len(pts))
            obj.frames[z] = (pts, labels, o.get("box"))
        out[str(image)] = list(parsed.values())
    return out


def read_prompts(path: str | Path) -> dict[str, list[PromptedObject]]:
    """{image key: [objects]} from a ``.csv`` or ``.json`` prompts file (module doc), objects in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    if path.suffix.lower() == ".json":
        return _json(path)
    if path.suffix.lower() == ".csv":
        return _csv(path)
    raise SamUserError(f"{path}: prompts must be a .csv or .json file")


def prompts_for(prompts: dict[str, list[PromptedObject]], path: Path) -> list[PromptedObject] | None:
    """The objects of input ``path`` in ``prompts``: those under its file name, its stem or its path (all
    that match, in the order the keys first appear in the file); None when no key matches."""
    from napari_sam.batch.inputs import stem

    keys = {path.name, stem(path), str(path)}
    found = [objs for key, objs in prompts.items() if key in keys]
    return [o for objs in found for o in objs] if found else None


def image_prompts(objects: list[PromptedObject], name: str) -> list[ObjectPrompt]:
    """The prompts of a 2D image's objects, in order (ids 1..N); ``SamUserError`` when one names a slice."""
    for obj in objects:
        if set(obj.frames) != {None}:
            z = next(z for z in obj.frames if z is not None)
            raise SamUserError(
                f"{name} is a 2D image, but object {obj.name!r} has prompts on slice {z}: slices are for volumes "
                f"(--mode volume)"
            )
    return [obj.frames[None] for obj in objects]


def _check_on_slice(rc: np.ndarray, hw: tuple[int, int], what: str) -> None:
    h, w = hw
    bad = ~((rc[:, 0] >= -0.5) & (rc[:, 0] <= h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] <= w - 0.5))
    if bad.any():
        r, c = rc[int(np.argmax(bad))].tolist()
        raise SamUserError(
            f"{what}: (row, col) ({r:g}, {c:g}) lies outside the {h} x {w} slice (rows -0.5..{h - 0.5:g}, "
            f"cols -0.5..{w - 0.5:g}); are row and col swapped?"
        )


def volume_seeds(objects: list[PromptedObject], shape: tuple[int, ...], name: str) -> dict[int, dict[int, Prompt]]:
    """``segment_volume``'s seeds from a volume's prompted objects: {id: {slice: Prompt}}, ids 1..N in file
    order, points and boxes turned into SAM's (x, y); ``SamUserError`` for a prompt without a slice, on a
    slice out of range or off the slice. ``shape``: the volume's (n, H, W[, C])."""
    n, hw = int(shape[0]), (int(shape[1]), int(shape[2]))
    seeds: dict[int, dict[int, Prompt]] = {}
    for oid, obj in enumerate(objects, start=1):
        for z, (points, labels, box) in obj.frames.items():
            what = f"{name}: object {obj.name!r}" + ("" if z is None else f" on slice {z}")
            if z is None:
                raise SamUserError(f"{what} has a prompt without a slice: a volume's prompts need one "
                                   f"(CSV column 'slice', JSON key \"slice\")")
            if not 0 <= z < n:
                raise SamUserError(f"{what}: slice {z} is out of range, the volume has slices 0..{n - 1}")
            try:
                pts = None if not points else np.asarray(points, dtype=np.float32).reshape(-1, 2)
                corners = None if box is None else np.asarray(box, dtype=np.float32).reshape(2, 2)
            except (TypeError, ValueError):
                raise SamUserError(f"{what}: points are [[row, col], ...] and a box [row0, col0, row1, col1], "
                                   f"got points {points!r:.60} and box {box!r:.60}") from None
            for rc in (pts, corners):
                if rc is not None:
                    _check_on_slice(rc, hw, what)
            seeds.setdefault(oid, {})[z] = Prompt(
                points=None if pts is None else rc_to_xy(pts),
                labels=None if pts is None else np.asarray(labels if labels is not None else [1] * len(pts), np.int64),
                box=None if corners is None else box_rc_to_xy(corners),
            )
    return seeds


def segment_prompts(model: Any, image: np.ndarray, objects: list[ObjectPrompt]) -> np.ndarray:
    """(H, W) int32 labels of ``objects`` on ``image``: one ``SamPredictor.predict`` per object (one mask,
    as the widget's ``segment``), ids 1..N in order; where objects overlap, the earlier one keeps its pixels
    (as the widget's label writer keeps existing objects)."""
    from napari_sam.engine.predictor import SamPredictor

    predictor = SamPredictor(model)
    predictor.set_image(image)
    h, w = predictor.original_size
    labels = np.zeros((h, w), np.int32)
    for oid, (points, plabels, box) in enumerate(objects, start=1):
        pts = None if not points else rc_to_xy(np.asarray(points, dtype=np.float32))
        lab = None if pts is None else np.asarray(plabels if plabels is not None else [1] * len(pts), np.int64)
        xyxy = None if box is None else box_rc_to_xy(np.asarray(box, dtype=np.float32).reshape(2, 2))
        masks, _, _ = predictor.predict(pts, lab, xyxy, multimask_output=False)
        labels[masks[0] & (labels == 0)] = oid
    return labels
