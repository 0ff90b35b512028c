"""Fine-tune any registry model (or checkpoint) on your own images + instance labels.

>>> from napari_sam.train import finetune
>>> model = finetune("nano_nuclei", "my/images", "my/labels", out="runs/mine", steps=1000)
>>> # later: napari_sam.weights.load_model("runs/mine/model.pt")

``images``/``labels``: two folders of 2D files matched by sorted file name (png, tif, ...), two
(n, H, W[, C]) / (n, H, W) tif stacks, or two lists of numpy arrays. Labels are instance
images (0 = background, 1..N = objects), e.g. a napari Labels layer saved to tif.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..engine.device import pick_device
from ..engine.progress import Cancel, Progress
from ..weights.loading import load_model
from .data import load_pairs
from .loop import TrainConfig, train


def finetune(
    model=None,
    images=None,
    labels=None,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    steps: int | None = None,
    lr: float | None = None,
    freeze_encoder: bool | None = None,
    device: str | torch.device | None = None,
    log: Callable[[str], None] = print,
    progress: Progress = None,
    cancel: Cancel = None,
    threads: int | str | None = "auto",
) -> torch.nn.Module:
    """Fine-tune ``model`` with SAM's interactive recipe and return it (eval mode).

    Args:
        model: a ``Sam``, a registry name, a checkpoint path, or None (the default model).
        images, labels: see the module docstring.
        out: folder for ``checkpoint.pt`` (resumable: run again to continue) and ``model.pt``
            (the weights, loadable by ``napari_sam.weights.load_model``); None keeps nothing on disk.
        config: full :class:`TrainConfig`; default 2000 steps at lr 1e-4 (``steps``/``lr`` override).
        freeze_encoder: None = freeze big encoders (> 20 M parameters, e.g. SAM ViTs) and train small ones.
        device: None picks cuda > mps > cpu.
        progress, cancel: ``progress(done, total)`` callback and a cancel callable/Event (long work).
    """
    dev = pick_device(device)
    if model is None or isinstance(model, (str, Path)):
        model = load_model(model, device=dev)
    model.requires_grad_(True)
    cfg = config or TrainConfig(steps=2000, lr=1e-4, warmup=50, checkpoint_every_s=120.0)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    if lr is not None:
        cfg = replace(cfg, lr=lr)
    if freeze_encoder is None and config is None:
        n = sum(p.numel() for p in model.image_encoder.parameters())
        freeze_encoder = n > 20_000_000
    if freeze_encoder is not None:
        cfg = replace(cfg, freeze_encoder=freeze_encoder)
    samples = load_pairs(images, labels, int(model.image_encoder.img_size))
    log(f"fine-tuning {getattr(model, 'arch', 'model')} on {len(samples)} images, {cfg.steps} steps")
    ckpt = export = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt, export = out / "checkpoint.pt", out / "model.pt"
    model = train(model, samples, cfg, checkpoint=ckpt, device=dev, log=log, progress=progress,
                  cancel=cancel, export=export, threads=threads)
    return model.requires_grad_(False)
