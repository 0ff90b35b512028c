"""``--mode volume``: objects carried through each volume with ``segment_volume``, from a seeds Labels file
or from prompts on chosen slices.

Seeds (``--seeds``): a labels file (tif or zarr, shaped like the volume without its colour axis; every
labelled slice of an object is a keyframe, as the widget's "extend labels"), or a folder holding one per
volume, named ``<name>_seeds.tif`` / ``.zarr`` (or ``<name>_labels.*``, ``<name>.*``) for a volume ``<name>.*``.
Object ids are the seeds' ids.

Prompts (``--prompts``): the prompts file of ``--mode prompts`` with a slice per prompt
(:mod:`napari_sam.batch.prompts`); each prompted slice of an object is a keyframe (points and/or a box,
turned into SAM's (x, y) there). Ids are the file's object numbering, 1..N in order of first appearance.
A volume takes its seeds file when one matches, else its prompts; a volume with both is refused (a
``failed`` row naming both), as is a prompt on a slice out of range or off the slice.

The volume and the seeds are read slice by slice (a zarr volume is never loaded whole: the embedding
store reads the slices it encodes) and the labels are written slice by slice into the output OME-Zarr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.batch.prompts import PromptedObject, prompts_for, volume_seeds
from napari_sam.errors import SamUserError

__all__ = ["keyframe_source", "read_seeds", "seeds_for", "segment_volume_task"]

#: bytes of slice embeddings a volume task keeps in memory (128 slices of a SAM ViT in float16)
EMBEDDING_BUDGET = 256 << 20
_SEED_NAMES = ("{}_seeds", "{}_labels", "{}")
_SEED_SUFFIXES = (".tif", ".tiff", ".zarr", ".ome.zarr")


def seeds_for(seeds: str | Path, volume: Path) -> str | None:
    """The seeds file of ``volume``: ``seeds`` itself when it is a file, else a match in the folder."""
    from napari_sam.batch.inputs import stem

    seeds = Path(seeds).expanduser()
    if not seeds.is_dir() or seeds.suffix.lower() == ".zarr":
        return str(seeds)
    for pattern in _SEED_NAMES:
        for suffix in _SEED_SUFFIXES:
            cand = seeds / (pattern.format(stem(volume)) + suffix)
            if cand.exists() and cand.resolve() != volume.resolve():
                return str(cand)
    return None


def keyframe_source(
    volume: Path, seeds: str | Path | None, table: dict[str, list[PromptedObject]] | None, prompts: str | Path | None
) -> tuple[str | None, list[PromptedObject] | None]:
    """Where the keyframes of ``volume`` come from: (its seeds file, None) or (None, its prompted objects).

    ``seeds``: the ``--seeds`` argument; ``table``: the prompts file ``prompts``, read. ``SamUserError`` when
    both have something for this volume, or neither."""
    seed_file = None if seeds is None else seeds_for(seeds, volume)
    objects = None if table is None else prompts_for(table, volume)
    if seed_file is not None and objects:
        raise SamUserError(
            f"{volume.name} has both seeds ({seed_file}) and prompts (in {prompts}): give one of them "
            f"(--seeds or --prompts), or take its rows out of the prompts file"
        )
    if objects:
        return None, objects
    if seed_file is None:
        where = [] if seeds is None else [f"<name>_seeds.tif or .zarr in {seeds}"]
        where += [] if prompts is None else [f"rows for {volume.name} in {prompts}"]
        raise SamUserError(f"no seeds or prompts for {volume.name}: expected {' or '.join(where)}")
    return seed_file, None


def read_seeds(path: Path, n: int) -> dict[int, dict[int, Any]]:
    """{object id: {slice: Prompt(mask)}} from a (n, H, W) labels file, one slice at a time."""
    from napari_sam.batch.inputs import read_image
    from napari_sam.volume.result import seeds_from_labels

    labels = read_image(path)
    if len(labels.shape) != 3 or int(labels.shape[0]) != n:
        raise SamUserError(f"seeds {path} have shape {tuple(labels.shape)}, expected ({n}, H, W) like the volume")
    seeds: dict[int, dict[int, Any]] = {}
    for z in range(n):
        sl = np.asarray(labels[z])
        if sl.any():
            for oid, frames in seeds_from_labels(sl[None]).items():
                seeds.setdefault(oid, {})[z] = frames[0]
    return seeds


def segment_volume_task(task: Any, model: Any) -> int:
    """Carry the objects of ``task`` (its seeds file, else its prompted objects) through its volume and write its
    labels; returns the number of objects."""
    from napari_sam.batch.inputs import read_image
    from napari_sam.batch.tasks import model_name
    from napari_sam.batch.writing import VolumeWriter
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.volume.propagate import segment_volume
    from napari_sam.volume.store import EmbeddingStore
    from napari_sam.weights.registry import volume_overrides

    name = Path(task.input).name
    if task.seeds is None and not task.prompts:
        raise SamUserError(f"no seeds or prompts for {name}")
    volume = read_image(Path(task.input))
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) not in (3, 4):
        raise SamUserError(f"{task.input}: volume mode takes (n, H, W) or (n, H, W, 3|4) data, got {shape}")
    if task.seeds is not None:
        seeds = read_seeds(Path(task.seeds), shape[0])
        if not seeds:
            raise SamUserError(f"seeds {task.seeds} hold no object (all zero)")
    else:
        seeds = volume_seeds(task.prompts, shape, name)
    # the per-slice loop walks away from the seeds: a small embedding cache is enough, and keeps a worker's
    # memory flat on a volume of any length
    store = EmbeddingStore(SamPredictor(model), volume, budget_bytes=EMBEDDING_BUDGET)
    # the model's own stop rules (registry; docs/volume.md) unless the task sets them
    result = segment_volume(store, seeds=seeds, **{**volume_overrides(model_name(task, model)), **task.params})
    with VolumeWriter(Path(task.output), shape[:3], task.scale) as writer:
        for z in range(shape[0]):
            writer[z] = result.label_slice(z)
    return len(result.ids)
