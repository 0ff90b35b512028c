"""One unit of batch work (an image, a tile of a large image, a stack slice, a volume) and the per-process
model cache.

A task names its model (a registry name or a checkpoint path), never carries it: :func:`get_model` loads
it once per process (a dask worker, or the calling process with ``workers=0``) and keeps it for every
later task, also across the threads of one worker. The segmentation is the engine's own
(``AutomaticMaskGenerator.generate_labels``, ``SamPredictor.predict``, ``segment_volume``), the same
calls the widget and the Python API make. A task never raises: a failure is returned as a record with
``status='failed'`` and the reason, so one bad input does not stop the batch.

A large 2D image (``params['tile_size']`` set and a side above it) is one task per tile: each returns the
masks of its tile's crops (``AutomaticMaskGenerator.crop_masks``), and the caller merges them
(``merge_crop_masks``, ``paint_labels``) into the labels ``generate_labels`` gives in one process.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Task", "get_model", "model_loads", "run_task", "tile_count"]

_MODELS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
_LOADS = {"count": 0}


def get_model(spec: Any, device: str | None = None) -> Any:
    """The model ``spec`` names (registry name, checkpoint path, None: the default), loaded once per process.

    A model object is returned as it is (``workers=0`` with a model already in memory)."""
    if spec is not None and not isinstance(spec, str | os.PathLike):
        return spec
    key = (str(spec), str(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from napari_sam.weights.loading import load_model

            model = _MODELS[key] = load_model(spec, device=device)
            _LOADS["count"] += 1
        return model


def model_loads() -> int:
    """How many models this process has loaded (a worker loads each model once)."""
    return _LOADS["count"]


@dataclass
class Task:
    """What to do with one input (or one slice ``z`` of it, ``kind='slice'``, or one tile, ``kind='tile'``).

    kind: ``'image'`` (2D, everything or prompts), ``'slice'`` (one slice of a stack, everything; the
    labels come back to be linked), ``'tile'`` (tile ``tile`` of a large 2D image, everything; its
    masks come back to be merged), ``'volume'`` (objects carried through a volume from the ``seeds`` file or,
    without one, from ``prompts``). ``prompts``: an image's objects (``ObjectPrompt`` s, ids 1..N) or a
    volume's (``PromptedObject`` s, prompts per slice); :mod:`napari_sam.batch.prompts`.
    """

    input: str
    output: str
    kind: str
    mode: str
    model: Any = None
    device: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    prompts: list | None = None
    z: int | None = None
    seeds: str | None = None
    scale: list | None = None
    tile: int | None = None


def model_name(task: Task, model: Any) -> str | None:
    """The registry name (or path) of ``task``'s model, whose registry defaults apply; None if unknown."""
    return task.model if isinstance(task.model, str) else getattr(model, "model_name", None)


def _generator(task: Task, model: Any) -> Any:
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.weights.registry import DEFAULT_MODEL, automatic_settings

    return AutomaticMaskGenerator(model, **automatic_settings(model_name(task, model) or DEFAULT_MODEL, task.params))


def tile_count(shape: tuple[int, ...], params: dict[str, Any]) -> int:
    """How many tiles ``AutomaticMaskGenerator(**params)`` cuts a 2D image of ``shape`` ((H, W[, C])) into;
    1 when it is not tiled (no ``tile_size``, or no side above it)."""
    size = params.get("tile_size")
    if size is None or max(shape[:2]) <= int(size):
        return 1
    import inspect

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.automatic.utils import tile_boxes

    default = inspect.signature(AutomaticMaskGenerator).parameters["tile_overlap"].default
    return len(tile_boxes((int(shape[0]), int(shape[1])), int(size), int(params.get("tile_overlap", default))))


def _tile(task: Task, model: Any) -> tuple[list, dict[str, Any]]:
    """The masks of tile ``task.tile``'s crops (on the CPU, without their logits: what travels back) and
    the generator's parameters that merge them."""
    from napari_sam.automatic.batch import Masks
    from napari_sam.batch.inputs import read_image

    gen = _generator(task, model)
    img = gen.prepare(np.asarray(read_image(Path(task.input))))
    boxes, layers = gen.tile_crops(img.shape[:2])[int(task.tile)]
    parts = [
        Masks(m.iou.cpu(), m.stability.cpu(), m.boxes.cpu(), m.points.cpu(), m.crop_boxes.cpu(),
              [c.cpu() for c in m.crops])
        for m in gen.crop_masks(img, boxes, layers)
    ]
    merge = {"crop_nms_thresh": gen.crop_nms_thresh, "min_mask_region_area": gen.min_mask_region_area,
             "box_nms_thresh": gen.box_nms_thresh}
    return parts, merge


def _slice(data: Any, z: int) -> np.ndarray:
    return np.asarray(data[z])


def _image(task: Task, model: Any) -> tuple[np.ndarray | None, int]:
    from napari_sam.batch.inputs import read_image
    from napari_sam.batch.writing import write_labels_tif

    image = read_image(Path(task.input))
    if task.kind == "slice":
        image = _slice(image, int(task.z))
    if task.mode == "prompts":
        from napari_sam.batch.prompts import segment_prompts

        labels = segment_prompts(model, np.asarray(image), task.prompts or [])
    else:
        labels = _generator(task, model).generate_labels(np.asarray(image), progress=None)  # the batch has its bar
    if task.kind == "slice":
        return labels, int(labels.max(initial=0))
    write_labels_tif(labels, Path(task.output))
    return None, int(labels.max(initial=0))


def run_task(task: Task) -> dict[str, Any]:
    """Run ``task``; returns its record: input, output, status (``done``/``failed``), objects, seconds,
    message, and for slices ``z`` and ``labels`` (the slice's unlinked labels), for tiles ``tile``,
    ``masks`` (a list of ``Masks``, one per crop) and ``merge`` (the parameters that merge them)."""
    import warnings

    t0 = time.perf_counter()
    record: dict[str, Any] = {"input": task.input, "output": task.output, "pid": os.getpid()}
    if task.z is not None:
        record["z"] = task.z
    if task.tile is not None:
        record["tile"] = task.tile
    try:
        model = get_model(task.model, task.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no mask passed the thresholds": an empty result, not an error
            if task.kind == "volume":
                from napari_sam.batch.volume import segment_volume_task

                objects = segment_volume_task(task, model)
            elif task.kind == "tile":
                record["masks"], record["merge"] = _tile(task, model)
                objects = sum(len(m) for m in record["masks"])  # before the merge removes duplicates
            else:
                labels, objects = _image(task, model)
                if labels is not None:
                    record["labels"] = labels
        record.update(status="done", objects=objects, message="")
    except Exception as exc:  # reported in the summary; the batch goes on
        reason = str(exc).splitlines()[0] if str(exc) else ""
        record.update(status="failed", objects="", message=f"{type(exc).__name__}: {reason}"[:500])
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["model_loads"] = model_loads()
    return record
