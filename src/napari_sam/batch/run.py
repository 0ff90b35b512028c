"""``segment_batch``: many images, stacks and volumes -> one labels file each plus ``summary.csv``.

The plan is made in the calling process (which inputs, which outputs, what is already finished); the
work runs as :class:`~napari_sam.batch.tasks.Task` s, in this process (``workers=0``) or on dask.distributed
(:mod:`napari_sam.batch.cluster`). A 2D image is one task, or one per tile when ``params['tile_size']``
tiles it (the tiles' masks come back here to be merged into its labels); a stack in ``everything`` mode is one task per
slice, whose labels come back here to be linked across slices (``automatic.stack.link_slices``, as the
widget's "segment everything" on a stack) and written slice by slice; a volume in ``volume`` mode is one
task (its keyframes from a seeds file or from prompts on chosen slices). Both ways give the same labels: the tasks are the same calls on the same model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sam.batch.inputs import discover, is_volume, output_path, peek_shape, read_scale
from napari_sam.batch.tasks import Task, run_task, tile_count
from napari_sam.batch.writing import clean_partials, is_finished, read_summary, write_summary
from napari_sam.engine.progress import Cancel, Progress, is_cancelled
from napari_sam.errors import SamUserError

__all__ = ["MODES", "BatchReport", "segment_batch"]

MODES = ("everything", "prompts", "volume")


@dataclass
class BatchReport:
    """What a batch did: one record per input (``summary.csv``'s rows), the summary's path, the dashboard."""

    records: list[dict[str, Any]]
    summary: Path
    dashboard: str | None = None
    #: ``model_loads``: {process id: models loaded there} over the processes that ran tasks
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def describe(self) -> str:
        """A short final report: counts, then each failed input with its reason."""
        lines = [
            f"{len(self.records)} inputs: {self.count('done')} done, {self.count('skipped')} skipped (finished "
            f"before), {self.count('failed')} failed; summary: {self.summary}"
        ]
        lines += [f"  failed: {r['input']}: {r['message']}" for r in self.failed]
        return "\n".join(lines)


def _model_spec(model: Any, in_process: bool) -> Any:
    """What tasks carry: a name or path (checked here, loaded on the workers), or a model object in-process."""
    from napari_sam.weights.registry import REGISTRY

    if model is None or isinstance(model, str | os.PathLike):
        if model is not None and str(model) not in REGISTRY and not Path(model).expanduser().is_file():
            raise FileNotFoundError(
                f"{str(model)!r} is neither a file nor a registry model; known models: {', '.join(REGISTRY)}"
            )
        return None if model is None else (str(model) if str(model) in REGISTRY else str(Path(model).expanduser()))
    if in_process:
        return model
    name, path = getattr(model, "model_name", None), getattr(model, "checkpoint_path", None)
    if name in REGISTRY:
        return name
    if path is not None and Path(path).is_file():
        return str(path)
    raise SamUserError(
        "a model object can only run in this process (workers=0); for a cluster pass its registry name or "
        "checkpoint path (save it with torch.save(model.state_dict(), 'model.pt'))"
    )


class _Stack:
    """Linked labels of a stack's slices, written in slice order as they arrive (any order)."""

    def __init__(self, record: dict[str, Any], shape: tuple[int, ...], min_iou: float, scale: Any) -> None:
        from napari_sam.batch.writing import VolumeWriter

        self.record, self.n, self.min_iou = record, int(shape[0]), min_iou
        spatial = shape[:3]
        self.writer = VolumeWriter(Path(record["output"]), spatial, scale).__enter__()
        self.pending: dict[int, Any] = {}
        self.next_z, self.next_id, self.prev = 0, 1, None
        self.seconds, self.error = 0.0, ""

    def add(self, rec: dict[str, Any]) -> bool:
        """Take one slice's record; True when the stack is finished (written, or failed)."""
        from napari_sam.automatic.stack import link_slices

        self.seconds += float(rec.get("seconds") or 0)
        if rec["status"] != "done":
            self.error = self.error or f"slice {rec.get('z')}: {rec['message']}"
        else:
            self.pending[int(rec["z"])] = rec["labels"]
        while not self.error and self.next_z in self.pending:
            lab = self.pending.pop(self.next_z).astype("int32")
            if self.prev is None:
                self.next_id = int(lab.max(initial=0)) + 1
            else:
                lab, self.next_id = link_slices(self.prev, lab, self.next_id, self.min_iou)
            self.writer[self.next_z] = lab
            self.prev, self.next_z = lab, self.next_z + 1
        done = self.next_z == self.n or bool(self.error)
        if done:
            self.writer.__exit__(RuntimeError if self.error else None, None, None)
            self.record.update(
                status="failed" if self.error else "done", objects="" if self.error else self.next_id - 1,
                seconds=round(self.seconds, 3), message=self.error,
            )
        return done


class _Tiles:
    """The masks of a large image's tiles, merged and written as its labels once all have arrived."""

    def __init__(self, record: dict[str, Any], shape: tuple[int, ...], n: int) -> None:
        self.record, self.size, self.n = record, (int(shape[0]), int(shape[1])), n
        self.parts: dict[int, list] = {}
        self.merge: dict[str, Any] = {}
        self.seconds, self.error, self.arrived = 0.0, "", 0

    def add(self, rec: dict[str, Any]) -> bool:
        """Take one tile's record; True when the image is finished (written, or failed)."""
        from napari_sam.automatic.merge import merge_crop_masks, paint_labels
        from napari_sam.batch.writing import write_labels_tif

        self.arrived += 1
        self.seconds += float(rec.get("seconds") or 0)
        if rec["status"] != "done":
            self.error = self.error or f"tile {rec.get('tile')}: {rec['message']}"
        else:
            self.parts[int(rec["tile"])] = rec["masks"]
            self.merge = rec["merge"]
        if self.arrived < self.n:
            return False
        objects = ""
        if not self.error:
            parts = [m for k in range(self.n) for m in self.parts.pop(k)]  # crop_boxes order
            labels = paint_labels(merge_crop_masks(parts, self.size, **self.merge), self.size)
            write_labels_tif(labels, Path(self.record["output"]))
            objects = int(labels.max(initial=0))
        self.record.update(status="failed" if self.error else "done", objects=objects,
                           seconds=round(self.seconds, 3), message=self.error)
        return True


def segment_batch(
    inputs: Sequence[str | Path] | str | Path,
    output: str | Path,
    mode: str = "everything",
    model: Any = None,
    workers: int | None = 0,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    cancel: Cancel = None,
    *,
    prompts: str | Path | None = None,
    seeds: str | Path | None = None,
    device: str | None = None,
    params: dict[str, Any] | None = None,
    min_iou: float = 0.5,
    on_start: Callable[[str], None] | None = None,
) -> BatchReport:
    """Segment every input, write ``OUTPUT/<name>_labels.tif`` (2D) or ``.zarr`` (stacks, volumes) and
    ``OUTPUT/summary.csv``; see docs/batch.md.

    Args:
        inputs: image files, folders, glob patterns or list files (:func:`~napari_sam.batch.inputs.discover`).
        mode: ``'everything'`` (automatic masks with the model's own thresholds), ``'prompts'`` (points
            and boxes from ``prompts``, a CSV/JSON file, :mod:`napari_sam.batch.prompts`) or ``'volume'``
            (objects carried through each volume with ``segment_volume``, from the ``seeds`` labels or
            from ``prompts`` on chosen slices; :mod:`napari_sam.batch.volume`).
        model: registry name or checkpoint path (None: the default model); a model object only with ``workers=0``.
        workers: 0 runs in this process with no cluster; N a ``LocalCluster`` of N worker processes
            (None: dask's choice) with ``threads_per_worker`` threads each; ``scheduler`` (an address)
            uses an existing cluster instead.
        overwrite: redo inputs whose output exists (else they are skipped).
        progress: ``progress(done, total)`` after each task; cancel: checked between tasks.
        params: ``AutomaticMaskGenerator`` arguments (``points_per_side``, thresholds ...) or
            ``segment_volume`` ones for ``volume``; with ``tile_size`` an image with a side above it is
            one task per tile.
        min_iou: the IoU that links an object to the previous slice of a stack (everything mode).
        on_start: called with the dask dashboard link once the cluster is up.

    Returns:
        a :class:`BatchReport`; a failed input is in its records (and the summary), never raised.
    """
    if mode not in MODES:
        raise SamUserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    in_process = workers == 0 and not scheduler
    spec = _model_spec(model, in_process)
    from napari_sam.batch.prompts import image_prompts, prompts_for, read_prompts
    from napari_sam.batch.volume import keyframe_source

    if mode == "prompts" and prompts is None:
        raise SamUserError("--mode prompts needs a prompts file (--prompts FILE.csv|.json)")
    if mode == "volume" and seeds is None and prompts is None:
        raise SamUserError("--mode volume needs seeds (--seeds LABELS, a file or a folder of <name>_seeds files) "
                           "or prompts on chosen slices (--prompts FILE.csv|.json with a slice per prompt)")
    table = read_prompts(prompts) if mode in ("prompts", "volume") and prompts is not None else None

    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    clean_partials(out)
    summary = out / "summary.csv"
    previous = read_summary(summary)
    records: list[dict[str, Any]] = []
    tasks: list[Task] = []
    stacks: dict[str, tuple[dict, tuple[int, ...], Any]] = {}
    tiled: dict[str, _Tiles] = {}
    owners: dict[Path, Path] = {}
    params = dict(params or {})
    if mode == "everything":  # the model's thresholds and tiles where not given (tiles: one task each)
        from napari_sam.weights.registry import DEFAULT_MODEL, automatic_settings

        name = spec if isinstance(spec, str) else getattr(spec, "model_name", None)
        params = automatic_settings(name or DEFAULT_MODEL, params)
    base = {"mode": mode, "model": spec, "device": device, "params": params}
    for path in discover(inputs):
        shape = peek_shape(path)
        rec: dict[str, Any] = {"input": str(path), "status": "", "objects": "", "seconds": "", "message": ""}
        records.append(rec)
        try:
            volume = mode == "volume" or (shape is not None and is_volume(shape))
        except SamUserError as exc:
            rec.update(output="", status="failed", message=f"SamUserError: {exc}")
            continue
        target = output_path(path, out, volume)
        rec["output"] = str(target)
        if target in owners:
            raise SamUserError(f"{path} and {owners[target]} would both write {target}: rename one of them")
        owners[target] = path
        if is_finished(target) and not overwrite:
            old = previous.get(str(path), {})
            rec.update(status="skipped", objects=old.get("objects", ""), seconds=old.get("seconds", ""),
                       message="output exists (--overwrite to redo)")
            continue
        if mode == "volume":
            try:
                seed_file, objects = keyframe_source(path, seeds, table, prompts)
            except SamUserError as exc:
                rec.update(status="failed", message=f"SamUserError: {exc}")
                continue
            tasks.append(Task(str(path), str(target), "volume", seeds=seed_file, prompts=objects,
                              scale=read_scale(path), **base))
        elif mode == "prompts":
            objects = prompts_for(table, path)
            if volume:
                rec.update(status="failed", message="prompts mode takes 2D images; carry objects through stacks with "
                                                    "--mode volume (a slice per prompt)")
            elif objects is None:
                rec.update(status="failed", message=f"no prompts for {path.name} in {prompts}")
            else:
                try:
                    tasks.append(Task(str(path), str(target), "image", prompts=image_prompts(objects, path.name), **base))
                except SamUserError as exc:
                    rec.update(status="failed", message=f"SamUserError: {exc}")
        elif volume:
            stacks[str(path)] = (rec, shape, read_scale(path))
            tasks += [Task(str(path), str(target), "slice", z=z, **base) for z in range(int(shape[0]))]
        elif shape is not None and (n := tile_count(shape, base["params"])) > 1:
            tiled[str(path)] = _Tiles(rec, shape, n)
            tasks += [Task(str(path), str(target), "tile", tile=k, **base) for k in range(n)]
        else:
            tasks.append(Task(str(path), str(target), "image", **base))

    by_input = {r["input"]: r for r in records}
    open_stacks: dict[str, _Stack] = {}
    done = [0]

    loads: dict[int, int] = {}  # process id -> models it had loaded (1 per model: loaded once per worker)

    def on_record(rec: dict[str, Any]) -> None:
        done[0] += 1
        if "pid" in rec:
            loads[rec["pid"]] = max(loads.get(rec["pid"], 0), int(rec.get("model_loads") or 0))
        if "z" in rec:
            stack = open_stacks.get(rec["input"])
            if stack is None and rec["input"] in stacks:
                first, shape, scale = stacks.pop(rec["input"])
                stack = open_stacks[rec["input"]] = _Stack(first, shape, min_iou, scale)
            if stack is not None and stack.add(rec):
                del open_stacks[rec["input"]]
        elif "tile" in rec:
            if tiled[rec["input"]].add(rec):
                del tiled[rec["input"]]
        else:
            by_input[rec["input"]].update({k: rec[k] for k in ("status", "objects", "seconds", "message")})
        if progress is not None:
            progress(done[0], len(tasks))

    dashboard = None
    if in_process:
        for task in tasks:
            if is_cancelled(cancel):
                break
            on_record(run_task(task))
    elif tasks:
        from napari_sam.batch.cluster import run_on_dask

        def started(link: str) -> None:
            nonlocal dashboard
            dashboard = link
            if on_start is not None:
                on_start(link)

        run_on_dask(tasks, on_record, model=spec, device=device, workers=workers,
                    threads_per_worker=threads_per_worker, scheduler=scheduler, cancel=cancel, on_start=started)
    for stack in open_stacks.values():  # cancelled mid-stack: nothing under the final name
        stack.writer.__exit__(RuntimeError, None, None)
    for rec in records:
        if not rec["status"]:
            rec.update(status="failed", message="cancelled before it finished")
    write_summary(records, summary)
    return BatchReport(records, summary, dashboard, {"model_loads": loads})
