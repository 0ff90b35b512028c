"""Distil a frozen image encoder (the teacher) into a small student: ``python -m napari_sam.train distill``.

The teacher's embeddings come from a cache of native windows (:func:`napari_sam.train.native.build_cache`,
``python -m napari_sam.train cache``): the cache's seed draws the same windows again
(:func:`~napari_sam.train.native.draw_windows`), so every cached embedding is paired with its window's
input; the cached labels must equal the drawn ones, else the cache came from other data or another
seed and :func:`paired_windows` says so. The student encoder learns the teacher's embeddings with a
mean squared error, as MobileSAM's encoder learned SAM's; the last ``holdout`` windows are not
trained on and their error is logged. The student starts from a trained model's encoder where the
shapes agree (``init``: ``nano_nuclei``'s backbone). The result is a whole model: the student encoder
with the teacher's prompt encoder and mask decoder, which read the embeddings it imitates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.common import LayerNorm2d
from .data import Sample, Window
from .loop import warmup_cosine
from .native import draw_windows, window_input

__all__ = ["paired_windows", "init_matching", "distill"]


def paired_windows(cache: str | Path, samples: list[Sample], seed: int = 0, side: int = 256,
                   shard: int = 32) -> tuple[list[Window], torch.Tensor]:
    """The windows of the cache's shards (in order) and their teacher embeddings ``(n, C, h, w)`` fp16;
    ``seed``, ``side`` and ``shard`` as the cache was built with."""
    shards = sorted(Path(cache).glob("shard_*.pt"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.pt in {cache}: run `python -m napari_sam.train cache` first")
    drawn = draw_windows(samples, seed, side)
    wins, embs = [], []
    for path in shards:
        part = torch.load(path, weights_only=True)
        start = int(path.stem.split("_")[1]) * shard
        chunk = [w for _, w in drawn[start : start + len(part["labels"])]]
        if len(chunk) != len(part["labels"]) or not all(
            np.array_equal(w.labels, lab) for w, lab in zip(chunk, part["labels"].numpy(), strict=True)
        ):
            raise ValueError(f"{path}: its windows are not the ones seed {seed} draws from these images "
                             "(another seed, split or data): pass the cache's --seed and --data")
        wins += chunk
        embs.append(part["embeddings"])
    return wins, torch.cat(embs)


def init_matching(target: torch.nn.Module, source: torch.nn.Module) -> int:
    """Copy the parameters and buffers of ``source`` whose names and shapes ``target`` shares; how many."""
    mine = target.state_dict()
    same = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    target.load_state_dict(same, strict=False)
    return len(same)


def distill(student: torch.nn.Module, windows: list[Window], teacher: torch.Tensor, *, normalize: str,
            out: str | Path, steps: int = 1000, time_budget_s: float = 0.0, batch: int = 8, lr: float = 2e-3,
            warmup: int = 30, holdout: int = 32, seed: int = 0, log_every: int = 20,
            log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``student.image_encoder`` on (window, teacher embedding) pairs; writes ``out/model.pt``
    (the whole student model's state dict) at each log line and at the end. The schedule (warm-up,
    cosine) runs over ``steps``, or over ``time_budget_s`` seconds when that is > 0.
    Returns the last training and held-out mean squared errors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(windows)
    if n <= holdout:
        raise ValueError(f"{n} cached windows: need more than the {holdout} held out")
    inputs = torch.stack([window_input(w, normalize) for w in windows])
    train_ids, held_ids = np.arange(n - holdout), np.arange(n - holdout, n)
    sample = teacher[train_ids[:64]].float()
    scale = float(sample.var())  # errors also as a fraction of the embedding variance
    enc = student.image_encoder
    last = getattr(enc, "neck", [None])[-1]
    if isinstance(last, LayerNorm2d):  # start at the teacher's per-channel mean and spread (its scale is ~0.1)
        with torch.no_grad():
            last.weight.copy_(sample.std(dim=(0, 2, 3)))
            last.bias.copy_(sample.mean(dim=(0, 2, 3)))
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    t0, step, losses = time.time(), 0, []

    def progress() -> float:
        return (time.time() - t0) / time_budget_s if time_budget_s > 0 else step / steps

    def held_out() -> float:
        enc.eval()
        with torch.no_grad():
            err = [F.mse_loss(enc(inputs[i : i + 8]), teacher[i : i + 8].float()).item() * len(inputs[i : i + 8])
                   for i in range(int(held_ids[0]), n, 8)]
        enc.train()
        return sum(err) / holdout

    enc.train()
    while progress() < 1.0:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(lr, step, warmup, progress())
        step += 1
        idx = torch.from_numpy(rng.choice(train_ids, batch, replace=False))
        loss = F.mse_loss(enc(inputs[idx]), teacher[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0:
            train_mse, held = float(np.mean(losses[-log_every:])), held_out()
            log(f"step {step} t {time.time() - t0:.0f}s mse {train_mse:.4f} ({train_mse / scale:.3f} of var) "
                f"held out {held:.4f} ({held / scale:.3f}) lr {opt.param_groups[0]['lr']:.2e}")
            torch.save(student.state_dict(), out / "model.pt")
    enc.eval()
    result = {"steps": step, "train_mse": float(np.mean(losses[-log_every:])), "held_out_mse": held_out(),
              "variance": scale}
    torch.save(student.state_dict(), out / "model.pt")
    log(f"done: {result}")
    return result
