"""Command line: ``napari-sam gui | models | fetch NAME | auto IMAGE -o LABELS | batch INPUT... --output DIR``.

Batch use from a shell; the GUI subcommand opens napari with the plugin docked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_sam import DISTRIBUTION
from napari_sam.errors import SamUserError


def _cmd_gui(args: argparse.Namespace) -> int:
    import napari

    viewer = napari.Viewer(title="napari-sam")
    if args.image:
        try:
            viewer.open(args.image)
        except Exception as err:  # napari's readers raise many kinds; the window must close cleanly
            viewer.close()
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SamUserError(
                f"cannot open {args.image!r} as an image ({reason}); give a complete image file napari can "
                f"read (PNG, TIFF, JPEG, ...), or run 'napari-sam gui' without a file for the sample"
            ) from None
    elif not args.no_sample:
        viewer.open_sample(DISTRIBUTION, "nuclei")
    viewer.window.add_plugin_dock_widget(DISTRIBUTION, "Segment Anything")
    if args.screenshot:  # for docs and smoke tests: render once, save, quit
        from qtpy.QtCore import QThreadPool
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        viewer.screenshot(args.screenshot, canvas_only=False)
        viewer.close()
        # the widget's model load / first encode may still run in a worker thread: let it end
        # before the interpreter does (napari's own event loop waits for workers on quit; this
        # path never enters it)
        QThreadPool.globalInstance().waitForDone()
        return 0
    napari.run()
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_sam.weights.download import is_cached
    from napari_sam.weights.registry import list_models

    for info in list_models():
        if info.packaged:
            state = "packaged"
        elif info.in_package:
            state = "installed" if is_cached(info.name) else f"needs [{info.extra}]"
        else:
            state = "cached" if is_cached(info.name) else "not downloaded"
        size = f"{info.size_mb:8.1f} MB" if info.size_mb else " " * 11
        print(f"{info.name:24s} {info.arch:11s} {size}  {state:15s} {info.description}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from napari_sam.weights.download import fetch

    def progress(done: int, total: int) -> None:
        if total:
            print(f"\r{args.name}: {100 * done / total:5.1f}%", end="", file=sys.stderr)

    path = fetch(args.name, progress=progress)
    print(f"\n{path}")
    return 0


def _cmd_auto(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile
    from skimage import io

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.weights.loading import load_model
    from napari_sam.weights.registry import DEFAULT_MODEL, automatic_settings, automatic_tile_params

    image = np.asarray(io.imread(args.image))
    model = load_model(args.model, device=args.device)
    params = {
        "points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh, "box_nms_thresh": args.box_nms_thresh,
        "min_mask_region_area": args.min_area,
    }
    if args.tiles is False:
        params["tile_size"] = None
    params = automatic_settings(args.model or DEFAULT_MODEL, params)
    if args.tiles and params.get("tile_size") is None:
        params.update(automatic_tile_params(model.img_size, params["box_nms_thresh"]))
    generator = AutomaticMaskGenerator(model, **params)
    labels = generator.generate_labels(image)
    tifffile.imwrite(args.output, labels)
    print(f"{args.output}: {int(labels.max())} objects")
    return 0


def _bar(done: int, total: int) -> None:
    width = 30
    fill = width * done // total if total else width
    end = "\n" if done >= total else ""
    print(f"\rbatch [{'#' * fill}{'.' * (width - fill)}] {done}/{total} tasks", end=end, file=sys.stderr, flush=True)


def _cmd_batch(args: argparse.Namespace) -> int:
    from napari_sam.batch.run import segment_batch

    params = {"points_per_side": args.points_per_side} if args.mode != "volume" else {}
    for key in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
        if getattr(args, key) is not None and args.mode != "volume":
            params[key] = getattr(args, key)
    if args.min_area and args.mode != "volume":
        params["min_mask_region_area"] = args.min_area
    if args.tile_size and args.mode == "everything":  # a larger image is one task per tile
        params.update(tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    report = segment_batch(
        args.inputs, args.output, mode=args.mode, model=args.model, workers=args.workers,
        threads_per_worker=args.threads_per_worker, scheduler=args.scheduler, overwrite=args.overwrite,
        progress=None if args.quiet else _bar, prompts=args.prompts, seeds=args.seeds, device=args.device,
        params=params, on_start=lambda link: print(f"dask dashboard: {link}", file=sys.stderr),
    )
    print(report.describe())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gui = sub.add_parser("gui", help="open napari with the plugin docked")
    gui.add_argument("image", nargs="?", help="an image file to open instead of the sample")
    gui.add_argument("--no-sample", action="store_true", help="open no sample image")
    gui.add_argument("--screenshot", help="save a screenshot of the window to this PNG and quit")
    gui.set_defaults(func=_cmd_gui)

    models = sub.add_parser("models", help="list the model registry and download state")
    models.set_defaults(func=_cmd_models)

    fetch = sub.add_parser("fetch", help="download a registry model into the cache")
    fetch.add_argument("name")
    fetch.set_defaults(func=_cmd_fetch)

    auto = sub.add_parser("auto", help="segment everything in a 2D image, write instance labels (tif)")
    auto.add_argument("image")
    auto.add_argument("-o", "--output", required=True)
    auto.add_argument("--model", default=None, help="registry name or checkpoint path (default: packaged)")
    auto.add_argument("--device", default=None)
    auto.add_argument("--points-per-side", type=int, default=32)
    thr = "(default: the model's; nano_nuclei 0.5 / 0.9 / 0.2, SAM's 0.88 / 0.95 / 0.7 otherwise)"
    auto.add_argument("--pred-iou-thresh", type=float, default=None, help=f"min predicted IoU {thr}")
    auto.add_argument("--stability-score-thresh", type=float, default=None, help=f"min stability {thr}")
    auto.add_argument("--box-nms-thresh", type=float, default=None, help=f"box IoU for duplicates {thr}")
    auto.add_argument("--min-area", type=int, default=0, help="remove holes/islands below this area (px)")
    auto.add_argument("--tiles", action=argparse.BooleanOptionalAction, default=None,
                      help="an image larger than the model's input in tiles at full resolution (default: the "
                           "model's; on for lite_medsam_nuclei and lite_medsam_nano_nuclei; docs/tiling.md)")
    auto.set_defaults(func=_cmd_auto)

    batch = sub.add_parser(
        "batch", help="segment many images, stacks or volumes (one labels file each, summary.csv); docs/batch.md",
        description="Exit status: 0 when every input is done or skipped, 1 when any failed (after all the others "
                    "finished), 2 for a usage error.",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns, list files")
    batch.add_argument("--output", "-o", required=True, metavar="DIR",
                       help="folder for <name>_labels.tif (2D) / .zarr (stacks, volumes) and summary.csv")
    batch.add_argument("--mode", choices=("everything", "prompts", "volume"), default="everything")
    batch.add_argument("--model", default=None, help="registry name or checkpoint path (default: packaged)")
    batch.add_argument("--workers", type=int, default=None,
                       help="LocalCluster worker processes (default: dask's choice); 0: this process, no cluster")
    batch.add_argument("--threads-per-worker", type=int, default=1, metavar="M")
    batch.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="an existing dask scheduler (tcp://host:8786) instead of a LocalCluster")
    batch.add_argument("--overwrite", action="store_true", help="redo inputs whose output exists")
    batch.add_argument("--prompts", default=None, metavar="FILE",
                       help="--mode prompts: points/boxes (row, col), .csv or .json; --mode volume: the same with a "
                            "slice per prompt (objects carried from those slices)")
    batch.add_argument("--seeds", default=None, metavar="LABELS",
                       help="--mode volume: a seeds labels file, or a folder of <name>_seeds.tif|.zarr")
    batch.add_argument("--device", default=None)
    batch.add_argument("--points-per-side", type=int, default=32)
    batch.add_argument("--pred-iou-thresh", type=float, default=None, help=f"{thr}")
    batch.add_argument("--stability-score-thresh", type=float, default=None)
    batch.add_argument("--box-nms-thresh", type=float, default=None)
    batch.add_argument("--min-area", type=int, default=0)
    batch.add_argument("--tile-size", type=int, default=None, metavar="PX",
                       help="an image with a side above PX is segmented in tiles of PX, one task each")
    batch.add_argument("--tile-overlap", type=int, default=256, metavar="PX",
                       help="pixels shared by neighbouring tiles (more than the largest object)")
    batch.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    batch.set_defaults(func=_cmd_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, RuntimeError, OSError) as err:
        print(f"napari-sam: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
