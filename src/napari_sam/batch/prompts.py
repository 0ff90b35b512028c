"""Prompt files of ``--mode prompts``: points and boxes per image, in napari's (row, col) order.

Coordinates are pixels of the image, (row, col) as napari shows them (row 0 at the top); they are turned
into SAM's (x, y) in one place (:mod:`napari_sam.viewer.slicing`). Each object becomes one label id,
numbered 1, 2, ... in the order the objects first appear in the file.

CSV (header required; one row per point or box; ``label`` 1 positive, 0 negative, default 1)::

    image,object,type,row,col,row1,col1,label
    a.png,1,point,120,88,,,1
    a.png,1,point,130,95,,,0
    a.png,2,box,10,20,40,60,
    b.tif,1,box,5,5,50,70,

A box's ``row, col`` is one corner, ``row1, col1`` the opposite one.

JSON: ``{image: [object, ...]}``, each object ``{"points": [[row, col], ...], "labels": [1, 0],
"box": [row0, col0, row1, col1]}`` (points and/or a box; ``labels`` default to all positive)::

    {"a.png": [{"points": [[120, 88], [130, 95]], "labels": [1, 0]}, {"box": [10, 20, 40, 60]}]}

The ``image`` key is an input's file name (``a.png``), its name without the suffix (``a``) or its path as
given on the command line; rows under any of these belong to that input.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import SamUserError

__all__ = ["ObjectPrompt", "prompts_for", "read_prompts", "segment_prompts"]

#: one object: (points (N, 2) (row, col) or None, labels (N,) or None, box (row0, col0, row1, col1) or None)
ObjectPrompt = tuple[list[list[float]] | None, list[int] | None, list[float] | None]


def _csv(path: Path) -> dict[str, list[ObjectPrompt]]:
    objects: dict[str, dict[str, dict[str, Any]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"image", "object", "type", "row", "col"}
        if not need <= set(reader.fieldnames or ()):
            raise SamUserError(
                f"{path}: a prompts CSV needs the columns image,object,type,row,col (and row1,col1 for boxes, "
                f"label for points); found {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                obj = objects.setdefault(row["image"], {}).setdefault(row["object"], {"points": [], "labels": []})
                kind = row["type"].strip().lower()
                rc = [float(row["row"]), float(row["col"])]
                if kind == "point":
                    obj["points"].append(rc)
                    obj["labels"].append(int(row.get("label") or 1))
                elif kind == "box":
                    obj["box"] = rc + [float(row["row1"]), float(row["col1"])]
                else:
                    raise ValueError(f"type must be 'point' or 'box', not {row['type']!r}")
            except (TypeError, ValueError) as exc:
                raise SamUserError(f"{path}, line {line}: {exc}") from None
    return {
        image: [(o["points"] or None, o["labels"] or None, o.get("box")) for o in objs.values()]
        for image, objs in objects.items()
    }


def _json(path: Path) -> dict[str, list[ObjectPrompt]]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SamUserError(f"{path}: a prompts JSON is an object {{image: [objects]}}, not {type(data).__name__}")
    out: dict[str, list[ObjectPrompt]] = {}
    for image, objs in data.items():
        parsed = []
        for k, o in enumerate(objs):
            if not isinstance(o, dict) or not ({"points", "box"} & set(o)):
                raise SamUserError(f"{path}: object {k} of {image!r} needs 'points' and/or 'box', got {o!r}")
            pts = o.get("points")
            labels = o.get("labels", None if pts is None else [1] * len(pts))
            parsed.append((pts, labels, o.get("box")))
        out[str(image)] = parsed
    return out


def read_prompts(path: str | Path) -> dict[str, list[ObjectPrompt]]:
    """{image key: [object prompts]} from a ``.csv`` or ``.json`` prompts file (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    if path.suffix.lower() == ".json":
        return _json(path)
    if path.suffix.lower() == ".csv":
        return _csv(path)
    raise SamUserError(f"{path}: prompts must be a .csv or .json file")


def prompts_for(prompts: dict[str, list[ObjectPrompt]], path: Path) -> list[ObjectPrompt] | None:
    """The objects of input ``path`` in ``prompts``: those under its file name, its stem or its path (all
    that match, in the order the keys first appear in the file); None when no key matches."""
    from napari_sam.batch.inputs import stem

    keys = {path.name, stem(path), str(path)}
    found = [objs for key, objs in prompts.items() if key in keys]
    return [o for objs in found for o in objs] if found else None


def segment_prompts(model: Any, image: np.ndarray, objects: list[ObjectPrompt]) -> np.ndarray:
    """(H, W) int32 labels of ``objects`` on ``image``: one ``SamPredictor.predict`` per object (one mask,
    as the widget's ``segment``), ids 1..N in order; where objects overlap, the earlier one keeps its pixels
    (as the widget's label writer keeps existing objects)."""
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.viewer.slicing import box_rc_to_xy, rc_to_xy

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
