"""Command line: ``python -m napari_sam.train {fit,evaluate,finetune} ...``.

- ``fit``: train a registry architecture from scratch on dsb2018 (how ``nano_nuclei`` was made).
- ``evaluate``: 1-click / box / corrective-click IoU and NoC@85/90 of any model on the dsb2018
  validation split (or on your own image + label folders).
- ``finetune``: fine-tune any registry model (or checkpoint file) on your own images + Labels.
- ``cache``: embed native-resolution dsb2018 training windows once with a frozen encoder (``fit --cache``).
- ``export``: keep the parts of trained weights a fine-tune changed (``lite_medsam_nuclei``'s decoder).
- ``distill``: train a small student encoder on a cache of a teacher's embeddings (``lite_medsam_nano``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _log_to(path: Path | None):
    fh = open(path, "a", buffering=1) if path else None

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if fh:
            fh.write(line + "\n")

    return log


def _ints(v: str) -> tuple[int, ...]:
    return tuple(int(t) for t in v.split(",") if t.strip())


def _threads(v: str) -> int | str:
    return v if v == "auto" else int(v)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt (resumable), model.pt, train.log")
    p.add_argument("--steps", type=int, default=100000, help="schedule length in steps")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; > 0: schedule by wall-clock time")
    p.add_argument("--batch", type=int, default=4, help="windows per step")
    p.add_argument("--window", type=int, default=0, help="crop side (0: 256 for stride-8 encoders, else img_size)")
    p.add_argument("--objects", type=int, default=4, help="objects per window")
    p.add_argument("--max-corrections", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--decoder-crops", default="16,16,24,32", help="decoder crop sides in embedding cells")
    p.add_argument("--late-from", type=float, default=1.0, help="schedule fraction where the late phase starts")
    p.add_argument("--late-window", type=int, default=0, help="window side in the late phase")
    p.add_argument("--late-decoder-crops", default="", help="decoder crops in the late phase")
    p.add_argument("--no-mask-input-prob", type=float, default=0.2, help="corrective rounds without mask_input")
    p.add_argument("--focal-weight", type=float, default=20.0, help="focal : dice = this : 1 (SAM: 20)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--freeze-encoder", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_threads, default="auto", help="torch threads, or 'auto'")
    p.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds")
    p.add_argument("--log-every", type=int, default=20, help="steps")
    p.add_argument("--workers", type=int, default=0, help="processes drawing augmented windows ahead (0: inline)")
    p.add_argument("--scale-range", default="0.7,1.4", help="random rescaling range of a sample (p 0.3), 'lo,hi'")
    p.add_argument("--native", action="store_true",
                   help="train on native-resolution tiles (the model's whole input frame), as TiledPredictor embeds them")
    p.add_argument("--cache", default="", help="folder of cached embeddings (`cache` command): encoder frozen, not run")
    p.add_argument("--stop-after", type=float, default=0.0,
                   help="wall-clock seconds; > 0: save the checkpoint and stop after this long (resume later)")


def _config(a: argparse.Namespace):
    from .loop import TrainConfig

    return TrainConfig(steps=a.steps, time_budget_s=a.time_budget, batch=a.batch, window=a.window,
                       objects=a.objects, max_corrections=a.max_corrections, decoder_crops=_ints(a.decoder_crops),
                       late_from=a.late_from, late_window=a.late_window, late_decoder_crops=_ints(a.late_decoder_crops), lr=a.lr, focal_weight=a.focal_weight,
                       no_mask_input_prob=a.no_mask_input_prob, warmup=a.warmup,
                       freeze_encoder=a.freeze_encoder, seed=a.seed, checkpoint_every_s=a.checkpoint_every,
                       log_every=a.log_every, workers=a.workers,
                       scale_range=tuple(float(t) for t in a.scale_range.split(",")),
                       native=a.native or bool(a.cache), cache=str(a.cache))


def cmd_fit(a: argparse.Namespace) -> None:
    from ..models.sam import build_model
    from . import data
    from .loop import train

    a.out.mkdir(parents=True, exist_ok=True)
    log = _log_to(a.out / "train.log")
    log("command: " + " ".join(sys.argv))
    split = data.load_split(a.data)
    torch.manual_seed(a.seed)
    if a.init:  # start from trained weights of the same architecture (a registry name or a file)
        from ..weights.loading import load_model

        model = load_model(a.init, arch=a.arch, device="cpu").train().requires_grad_(True)
    else:
        model = build_model(a.arch)
    if a.cache:  # the windows and their embeddings come from the cache
        samples = []
    elif a.native:
        from .native import load_native_dsb2018

        samples = load_native_dsb2018(a.data, split["train"])
    else:
        samples = data.load_dsb2018(a.data, split["train"], img_size=model.img_size)
    t_end = time.time() + a.stop_after
    train(model, samples, _config(a), checkpoint=a.out / "checkpoint.pt", device=a.device, log=log,
          export=a.out / "model.pt", threads=a.threads,
          cancel=(lambda: time.time() > t_end) if a.stop_after > 0 else None)


def cmd_finetune(a: argparse.Namespace) -> None:
    from .tuning import finetune

    a.out.mkdir(parents=True, exist_ok=True)
    log = _log_to(a.out / "train.log")
    log("command: " + " ".join(sys.argv))
    cfg = _config(a)
    if not a.freeze_encoder and not a.train_encoder:  # auto: freeze big (ViT) encoders
        import dataclasses

        from ..weights.loading import load_model

        model = load_model(a.model, device=a.device)
        big = sum(p.numel() for p in model.image_encoder.parameters()) > 20_000_000
        cfg = dataclasses.replace(cfg, freeze_encoder=big)
        a.model = model
    finetune(a.model, a.images, a.labels, out=a.out, config=cfg, device=a.device, log=log, threads=a.threads)


def cmd_cache(a: argparse.Namespace) -> None:
    from ..weights.loading import load_model
    from . import data
    from .native import build_cache, load_native_dsb2018

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = _log_to(a.out / "cache.log")
    log("command: " + " ".join(sys.argv))
    model = load_model(a.model, device="cpu")
    samples = load_native_dsb2018(a.data, data.load_split(a.data)["train"])
    try:
        i, n_parts = (int(v) for v in a.part.split("/"))
        assert 0 <= i < n_parts
    except (ValueError, AssertionError):
        raise SystemExit(f"--part must be I/N with 0 <= I < N (e.g. 0/2), not {a.part!r}") from None
    n = build_cache(model, samples, a.out, seed=a.seed, side=int(model.image_encoder.img_size),
                    part=(i, n_parts), log=log)
    log(f"done: {n} windows")


def cmd_export(a: argparse.Namespace) -> None:
    """The parts of a trained state dict that a fine-tune changed, as a file that completes its base
    model's weights (``ModelInfo.base``), with its sha256."""
    import hashlib

    from ..weights.loading import load_state_dict

    prefixes = tuple(f"{p.strip()}." for p in a.parts.split(",") if p.strip())
    state = {k: v.contiguous() for k, v in load_state_dict(a.weights).items() if k.startswith(prefixes)}
    if not state:
        raise SystemExit(f"no keys of {a.weights} start with {', '.join(prefixes)}")
    if a.half:  # float tensors as float16 (loading casts them back to the model's float32)
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, a.out)
    digest = hashlib.sha256(Path(a.out).read_bytes()).hexdigest()
    print(f"{a.out}: {len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.2f} M parameters, "
          f"{Path(a.out).stat().st_size} bytes, sha256 {digest}")


def cmd_distill(a: argparse.Namespace) -> None:
    from ..models.sam import build_model
    from ..weights.loading import load_model
    from . import data
    from .distill import distill, init_matching, paired_windows
    from .native import load_native_dsb2018

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    log = _log_to(a.out / "train.log")
    log("command: " + " ".join(sys.argv))
    student = build_model(a.arch)
    teacher = load_model(a.teacher, device="cpu")
    side = int(student.image_encoder.img_size)
    if teacher.img_size != side or teacher.preprocessing != student.preprocessing:
        raise SystemExit(f"{a.teacher} ({teacher.img_size} px) and {a.arch} ({side} px) differ in input or preprocessing")
    # the student reads the same prompts into the same decoder: take the teacher's
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    if a.init:
        log(f"{init_matching(student.image_encoder, load_model(a.init, device='cpu').image_encoder)} encoder "
            f"tensors from {a.init}")
    samples = load_native_dsb2018(a.data, data.load_split(a.data)["train"])
    windows, embeddings = paired_windows(a.cache, samples, seed=a.cache_seed, side=side)
    log(f"{len(windows)} windows from {a.cache}")
    distill(student, windows, embeddings, normalize=student.preprocessing.normalize, out=a.out, steps=a.steps,
            time_budget_s=a.time_budget, batch=a.batch, lr=a.lr, holdout=a.holdout, seed=a.seed,
            log_every=a.log_every, log=log)


def _zoom(text: str) -> float | None | str:
    """``--zoom``: 'model' (the model's default), 'fit' (enlarge to the input) or a scale."""
    return text if text == "model" else None if text == "fit" else float(text)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate_models, format_table

    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.model.split(",") if a.model else [None]
    results = evaluate_models(names, data_root=a.data, images=a.images, labels=a.labels, device=a.device,
                              max_objects=a.max_objects, clicks=a.clicks, limit=a.limit, log=_log_to(None),
                              tiled=a.tiled, zoom=_zoom(a.zoom), subset=a.subset)
    for name, res in zip(names, results, strict=True):
        if len(names) > 1:
            print(f"\n{name or 'default model'} ({res['seconds_per_image']:.1f} s per image)")
        print(format_table(res))
    if a.json:
        out = results[0] if len(names) == 1 else dict(zip(names, results, strict=True))
        Path(a.json).write_text(json.dumps(out, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m napari_sam.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="train an architecture from scratch on dsb2018")
    p.add_argument("--arch", default="nano")
    p.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018"))
    p.add_argument("--init", default=None, help="start from these weights (registry name or file) instead of random")
    _add_train_args(p)
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("finetune", help="fine-tune a model on your own images + instance labels")
    p.add_argument("--model", default=None, help="registry name or checkpoint path (default: the default model)")
    p.add_argument("--images", required=True, help="folder of images, or an (n,H,W[,C]) tif stack")
    p.add_argument("--labels", required=True, help="folder of instance label images, or an (n,H,W) tif stack")
    _add_train_args(p)
    p.add_argument("--train-encoder", action="store_true", help="also train a big (ViT) encoder")
    p.set_defaults(func=cmd_finetune, steps=2000, lr=1e-4, warmup=50, device=None, checkpoint_every=120.0)
    p = sub.add_parser("cache", help="embed native-resolution dsb2018 training windows once with a frozen encoder")
    p.add_argument("--model", default="lite_medsam", help="registry name or checkpoint path")
    p.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018"))
    p.add_argument("--out", type=Path, required=True, help="folder for shard_NNNN.pt (resumable) and cache.log")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", default="0/1", help="I/N: embed every N-th shard from the I-th (N processes, one cache)")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("export", help="keep the parts a fine-tune changed (e.g. a decoder on a frozen encoder)")
    p.add_argument("--weights", required=True, help="a trained state dict (run folder's model.pt)")
    p.add_argument("--parts", default="prompt_encoder,mask_decoder", help="top-level modules to keep")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store float tensors as float16 (half the size)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("distill", help="train a small student encoder on a teacher's cached embeddings")
    p.add_argument("--cache", type=Path, required=True, help="the teacher's `cache` folder")
    p.add_argument("--cache-seed", type=int, default=0, help="the --seed the cache was built with")
    p.add_argument("--teacher", default="lite_medsam_nuclei", help="whose prompt encoder and decoder the student gets")
    p.add_argument("--arch", default="lite_medsam_nano", help="the student's architecture")
    p.add_argument("--init", default="nano_nuclei", help="encoder tensors of the same shape start from this model")
    p.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018"))
    p.add_argument("--out", type=Path, required=True, help="run folder: model.pt, train.log")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; > 0: schedule by wall-clock time")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--holdout", type=int, default=32, help="last cached windows kept out of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=20)
    p.set_defaults(func=cmd_distill)
    p = sub.add_parser("evaluate", help="interactive-segmentation metrics of a model")
    p.add_argument("--model", default=None,
                   help="registry name or checkpoint path; several, comma-separated: the same objects and prompts, "
                        "one embedding per image for models with the same encoder")
    p.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018"), help="dsb2018 (validation split)")
    p.add_argument("--images", default=None, help="evaluate on these images instead of dsb2018")
    p.add_argument("--labels", default=None)
    p.add_argument("--max-objects", type=int, default=20, help="objects per image (seeded choice)")
    p.add_argument("--clicks", type=int, default=10, help="max clicks for NoC")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--subset", type=int, default=0,
                   help="dsb2018: a fixed seeded subset of about N validation images, stratified by modality (0: all)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tiled", action="store_true",
                   help="segment images larger than the model's input at their own resolution, in tiles")
    p.add_argument("--zoom", default="model",
                   help="images smaller than the model's input: 'model' (its default), 'fit' (enlarged to fill "
                        "it) or a scale (1: own pixel scale, zero-padded)")
    p.set_defaults(func=cmd_evaluate)
    a = ap.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
