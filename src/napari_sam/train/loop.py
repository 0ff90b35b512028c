"""SAM's interactive training recipe for any registry model, with resumable checkpoints.

One step: ``batch`` random windows (augmented crops, see :func:`.data.random_window`); per window up
to ``objects`` instances; a first prompt (a positive point, centre-biased, or a jittered box), then
``1..max_corrections`` corrective iterations, each adding a click sampled from the error region of
the previous prediction and feeding its low-res logits back as ``mask_input``. Loss (focal x20 +
dice, IoU-head MSE) on the first and the last iteration; the middle ones run without gradient to
keep CPU training affordable. Windows smaller than ``img_size`` reuse the matching part of the
prompt encoder's dense positional encoding, so a window is exactly a part of a full input frame.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.progress import Cancel, Progress, is_cancelled
from .data import SCALE_RANGE, Sample, Window, random_window
from .losses import sam_loss
from .native import CachedWindows, native_window, window_input
from .prompts import center_point, corrective_point, jitter_box, random_point


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (all JSON-serialisable; stored in every checkpoint)."""

    steps: int = 10000            # schedule length in steps (or ``time_budget_s``, whichever ends first)
    time_budget_s: float = 0.0    # > 0: the cosine schedule follows wall-clock time and stops at the budget
    batch: int = 4                # windows per step
    window: int = 0               # crop side; 0 = 256 for stride-8 encoders, else img_size
    objects: int = 4              # instances per window
    max_corrections: int = 3      # corrective iterations per step: uniform in 1..max_corrections
    box_prob: float = 0.5         # first prompt is a box (else one positive point)
    no_mask_input_prob: float = 0.2
    decoder_crops: tuple[int, ...] = (16, 16, 24, 32)  # decoder sees a d x d cell crop per object; () = whole window
    multimask_always: bool = True  # train the 3 multimask outputs on every prompt (widgets use them for boxes
    #                                and several clicks too), not only on single clicks as SAM
    late_from: float = 1.0        # from this schedule fraction on, train with late_window / late_decoder_crops
    late_window: int = 0          # (bigger context, closer to inference on the full frame)
    late_decoder_crops: tuple[int, ...] = ()
    focal_weight: float = 20.0     # SAM: focal 20 : dice 1
    dice_weight: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    min_lr_ratio: float = 0.02
    clip: float = 1.0
    freeze_encoder: bool = False
    seed: int = 0
    checkpoint_every_s: float = 180.0
    log_every: int = 20
    workers: int = 0              # > 0: augmented windows are drawn ahead in this many forked processes
    scale_range: tuple[float, float] = SCALE_RANGE  # random rescaling of a sample (p 0.3), log-uniform
    native: bool = False          # windows are native-resolution tiles (``native.native_window``): samples
    #                               at their own scale, each window the model's whole input frame
    cache: str = ""               # folder of cached embeddings (``native.build_cache``): the encoder is frozen
    #                               and never run; windows and their embeddings come from there
    extra: dict = field(default_factory=dict)


def _pick_objects(w: Window, k: int, rng: np.random.Generator, min_area: int = 16) -> list[np.ndarray]:
    ids, counts = np.unique(w.labels[w.labels > 0], return_counts=True)
    ids = ids[counts >= min_area]
    chosen = rng.choice(ids, size=min(k, ids.size), replace=False)
    return [w.labels == i for i in chosen]


def _first_prompts(masks: list[np.ndarray], rng: np.random.Generator, box: bool):
    """Points (K,1,2) xy + labels (K,1), or boxes (K,4), in window pixels."""
    if box:
        return None, None, np.stack([jitter_box(m, rng) for m in masks])
    pts = []
    for m in masks:
        u = rng.random()
        p = center_point(m) if u < 0.3 else random_point(m, rng, center_power=2.0 if u < 0.7 else 0.0)
        pts.append(p)
    return np.array(pts, np.float32)[:, None], np.ones((len(masks), 1), np.float32), None


_POOL_SAMPLES: list[Sample] = []


def _pool_init(samples: list[Sample]) -> None:
    global _POOL_SAMPLES
    _POOL_SAMPLES = samples


def draw_windows(samples: list[Sample], rng: np.random.Generator, n: int, side: int, img_size: int,
                 scale_range: tuple[float, float]) -> list[Window]:
    """``n`` random augmented windows of side ``side`` (each with at least one object)."""
    out: list[Window] = []
    while len(out) < n:
        w = random_window(samples[int(rng.integers(len(samples)))], rng, side, img_size, scale_range=scale_range)
        if w is not None:
            out.append(w)
    return out


def _pool_draw(seed: int, n: int, side: int, img_size: int, scale_range: tuple[float, float]) -> list[Window]:
    return draw_windows(_POOL_SAMPLES, np.random.default_rng(seed), n, side, img_size, scale_range)


class _WindowPool:
    """Windows drawn ahead in forked worker processes (the augmentation is the CPU-bound part of a
    step on a GPU); each request gets a seed from the trainer's generator, so a run stays seeded."""

    def __init__(self, samples: list[Sample], workers: int, img_size: int,
                 scale_range: tuple[float, float]) -> None:
        # fork shares the samples with the workers; spawn (Windows) pickles them once per worker
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self.pool = ctx.Pool(workers, initializer=_pool_init, initargs=(samples,))
        self.depth, self.img_size, self.scale_range = 2 * workers, img_size, scale_range
        self.pending: deque = deque()

    def get(self, rng: np.random.Generator, n: int, side: int) -> list[Window]:
        while len(self.pending) < self.depth:
            seed = int(rng.integers(2**62))
            job = self.pool.apply_async(_pool_draw, (seed, n, side, self.img_size, self.scale_range))
            self.pending.append((side, job))
        got_side, res = self.pending.popleft()
        wins = res.get()
        return wins if got_side == side else self.get(rng, n, side)  # windows of an earlier phase: drop

    def close(self) -> None:
        self.pool.terminate()


def warmup_cosine(lr: float, step: int, warmup: int, progress: float, min_ratio: float = 0.02) -> float:
    """The learning rate at 0-based ``step``: linear warm-up over ``warmup`` steps, then a cosine from ``lr``
    down to ``min_ratio * lr`` over the schedule's ``progress`` (0 -> 1)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_ratio + (1 - min_ratio) * cos)


class Trainer:
    """Holds model, optimizer and data; :meth:`step` runs one interactive training step."""

    def __init__(self, model: torch.nn.Module, samples: list[Sample], cfg: TrainConfig,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.samples, self.cfg = model.to(device), samples, cfg
        self.device = torch.device(device)
        self.img_size = int(model.image_encoder.img_size)
        grid = model.prompt_encoder.image_embedding_size[0]
        self.stride = self.img_size // grid
        self.window = cfg.window or (256 if self.stride <= 8 and self.img_size > 256 else self.img_size)
        if self.window % 32 and self.window != self.img_size:
            raise ValueError("window must be a multiple of 32")
        if (cfg.native or cfg.cache) and (cfg.window or cfg.late_window) not in (0, self.img_size):
            raise ValueError("native windows are the model's whole input frame: leave window/late_window at 0")
        self.window = self.img_size if cfg.native or cfg.cache else self.window
        self.cached = CachedWindows(cfg.cache) if cfg.cache else None
        self.log_cache = 0 if self.cached is None else len(self.cached)  # windows in the cache
        self.normalize = getattr(getattr(model, "preprocessing", None), "normalize", "mean_std")
        if cfg.freeze_encoder or cfg.cache:
            for p in model.image_encoder.parameters():
                p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.step_idx, self.elapsed = 0, 0.0
        self.scale_range = (float(cfg.scale_range[0]), float(cfg.scale_range[1]))
        self.pool = None if cfg.workers <= 0 or cfg.native or cfg.cache else _WindowPool(samples, cfg.workers, self.img_size, self.scale_range)

    # -- schedule ---------------------------------------------------------------------------------
    def progress(self) -> float:
        p = self.step_idx / max(1, self.cfg.steps)
        if self.cfg.time_budget_s > 0:
            p = max(p, self.elapsed / self.cfg.time_budget_s)
        return min(1.0, p)

    def lr(self) -> float:
        c = self.cfg
        return warmup_cosine(c.lr, self.step_idx, c.warmup, self.progress(), c.min_lr_ratio)

    # -- one step ---------------------------------------------------------------------------------
    def _windows(self, side: int) -> list[Window]:
        if self.pool is not None:
            return self.pool.get(self.rng, self.cfg.batch, side)
        if self.cfg.native:
            out: list[Window] = []
            while len(out) < self.cfg.batch:
                w = native_window(self.samples[int(self.rng.integers(len(self.samples)))], self.rng, side)
                out += [] if w is None else [w]
            return out
        return draw_windows(self.samples, self.rng, self.cfg.batch, side, self.img_size, self.scale_range)

    def _embedded_windows(self, side: int) -> tuple[list[Window], torch.Tensor]:
        """``batch`` windows and their embeddings ``(batch, C, h, w)``: from the cache, or the encoder."""
        if self.cached is not None:
            if self.step_idx % 50 == 0 and self.cached.refresh():  # a cache still being built grows
                self.log_cache = len(self.cached)
            wins, embs = self.cached.draw(self.rng, self.cfg.batch)
            return wins, embs.to(self.device)
        wins = self._windows(side)
        x = torch.stack([window_input(w, self.normalize) for w in wins]).to(self.device)
        with torch.set_grad_enabled(not self.cfg.freeze_encoder):
            return wins, self.model.image_encoder(x)

    def _crops(self, wins: list[Window], d: int):
        """Per-object decoder crops: returns (window idx, cell y, cell x, gt mask crop) per object."""
        cfg, rng, st = self.cfg, self.rng, self.stride
        g = wins[0].labels.shape[0] // st
        out = []
        for b, w in enumerate(wins):
            for m in _pick_objects(w, cfg.objects, rng):
                ys, xs = np.nonzero(m)
                cy, cx = (ys.min() + ys.max()) / 2 / st, (xs.min() + xs.max()) / 2 / st
                y0 = int(np.clip(round(cy - d / 2 + rng.uniform(-d / 4, d / 4)), 0, g - d))
                x0 = int(np.clip(round(cx - d / 2 + rng.uniform(-d / 4, d / 4)), 0, g - d))
                crop = m[y0 * st : (y0 + d) * st, x0 * st : (x0 + d) * st]
                if crop.sum() >= 8:
                    out.append((b, y0, x0, crop))
        return out

    def step(self) -> dict[str, float]:
        """One optimisation step; returns logged scalars."""
        cfg, dev, rng, st = self.cfg, self.device, self.rng, self.stride
        self.model.train()
        if cfg.freeze_encoder or cfg.cache:
            self.model.image_encoder.eval()
        for grp in self.opt.param_groups:
            grp["lr"] = self.lr()
        late = self.progress() >= cfg.late_from
        side = min(self.img_size, cfg.late_window) if late and cfg.late_window else self.window
        crops = cfg.late_decoder_crops if late and cfg.late_decoder_crops else cfg.decoder_crops
        g = side // st
        d = min(g, int(rng.choice(crops))) if crops else g
        objs: list = []
        while not objs:
            wins, embs = self._embedded_windows(side)
            objs = self._crops(wins, d)
        full_pe = self.model.prompt_encoder.get_dense_pe()[0]
        emb = torch.stack([embs[b, :, y0 : y0 + d, x0 : x0 + d] for b, y0, x0, _ in objs])
        frame = [((wins[b].offset[0] // st + y0), (wins[b].offset[1] // st + x0)) for b, y0, x0, _ in objs]
        pe = torch.stack([full_pe[:, fy : fy + d, fx : fx + d] for fy, fx in frame])
        off = np.array([[fx * st, fy * st] for fy, fx in frame], np.float32)  # crop origin in the frame, xy
        masks = [o[3] for o in objs]
        gt = torch.from_numpy(np.stack(masks)).to(dev, torch.float32)
        n, crop_side = len(objs), d * st
        n_corr = int(rng.integers(1, cfg.max_corrections + 1))
        box_first = rng.random() < cfg.box_prob
        pts, lbl, boxes = _first_prompts(masks, rng, box_first)
        pts = None if pts is None else pts + off[:, None]
        boxes_t = None if boxes is None else torch.from_numpy(boxes + np.tile(off, 2)).to(dev)
        mask_in, losses, ious = None, [], []
        for it in range(n_corr + 1):
            grad = it == 0 or it == n_corr
            multi = it == 0 and not box_first
            with torch.set_grad_enabled(grad):
                pts_t = None if pts is None else torch.from_numpy(pts).to(dev)
                lbl_t = None if lbl is None else torch.from_numpy(lbl).to(dev)
                points = None if pts_t is None else (pts_t, lbl_t)
                sparse, dense = self.model.prompt_encoder(points, boxes_t, mask_in)
                if mask_in is None:
                    dense = dense[..., :d, :d]
                logits, iou_pred = self.model.mask_decoder.predict_masks(emb, pe, sparse, dense)
                up = F.interpolate(logits, size=(crop_side, crop_side), mode="bilinear", align_corners=False)
                if grad:
                    loss, iou = sam_loss(up[:, :1], iou_pred[:, :1], gt, cfg.focal_weight, cfg.dice_weight)
                    if multi or cfg.multimask_always:
                        l3, iou3 = sam_loss(up[:, 1:], iou_pred[:, 1:], gt, cfg.focal_weight, cfg.dice_weight)
                        loss, iou = loss + l3, torch.maximum(iou, iou3)
                    losses.append(loss)
                    ious.append(iou.mean().item())
            if it == n_corr:
                break
            with torch.no_grad():
                sel = (iou_pred[:, 1:].argmax(1) + 1) if multi else torch.zeros(n, dtype=torch.long)
                ar = torch.arange(n)
                chosen_low = logits[ar, sel].detach()[:, None]
                pred = (up[ar, sel] > 0).cpu().numpy()
            new = []
            for k, m in enumerate(masks):
                c = corrective_point(pred[k], m, rng)
                new.append((c[0] + off[k, 0], c[1] + off[k, 1], c[2]) if c is not None else (0.0, 0.0, -1))
            new_a = np.array(new, np.float32)
            pts = new_a[:, None, :2] if pts is None else np.concatenate([pts, new_a[:, None, :2]], 1)
            lbl = new_a[:, None, 2] if lbl is None else np.concatenate([lbl, new_a[:, None, 2]], 1)
            mask_in = None if rng.random() < cfg.no_mask_input_prob else chosen_low
        loss = torch.stack(losses).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.opt.step()
        self.step_idx += 1
        out = {"loss": loss.item(), "iou_first": ious[0], "iou_last": ious[-1], "objects": float(n),
               "lr": self.opt.param_groups[0]["lr"]}
        return out if self.cached is None else {**out, "windows": float(self.log_cache)}

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model_state": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "step": self.step_idx, "elapsed": self.elapsed, "config": asdict(self.cfg),
                "arch": getattr(self.model, "arch", "custom"),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}

    def save(self, path: str | Path) -> None:
        """Atomically write a resumable checkpoint (``model_state`` is loadable by ``napari_sam.weights``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model_state"])
        self.opt.load_state_dict(ck["optimizer"])
        self.step_idx, self.elapsed = int(ck["step"]), float(ck["elapsed"])
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"].cpu())


def train(
    model: torch.nn.Module,
    samples: list[Sample],
    cfg: TrainConfig,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
    progress: Progress = None,
    cancel: Cancel = None,
    export: str | Path | None = None,
    threads: int | str | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place on ``samples``; resumes from ``checkpoint`` when the file exists and
    rewrites it every ``cfg.checkpoint_every_s`` seconds and at the end; ``export`` also gets the bare
    state dict (what ``napari_sam.weights`` loads) at each checkpoint. ``threads="auto"`` switches
    torch between 1 and 2 threads by the machine's load (2 oversubscribed threads are far slower
    than 1 on a shared 2-core CPU). Returns the model (eval mode)."""
    if isinstance(threads, int):
        torch.set_num_threads(threads)
    tr = Trainer(model, samples, cfg, device)
    try:
        _run(tr, cfg, checkpoint, export, log, progress, cancel, threads)
    finally:
        if tr.pool is not None:
            tr.pool.close()
    return model.eval()


def _run(tr: Trainer, cfg: TrainConfig, checkpoint, export, log, progress, cancel, threads) -> None:
    """The loop of :func:`train`: steps, logging, periodic checkpoints, until the schedule ends."""
    if checkpoint is not None and Path(checkpoint).exists():
        tr.load(checkpoint)
        log(f"resumed from {checkpoint} at step {tr.step_idx} ({tr.elapsed:.0f} s)")
    log(f"config {json.dumps(asdict(cfg))}; window {tr.window}; {len(tr.samples)} samples")
    last_save, acc, first = time.time(), [], True
    while tr.progress() < 1.0:
        if is_cancelled(cancel):
            break
        if threads == "auto" and (first or tr.step_idx % 25 == 0):
            first = False
            ncpu = os.cpu_count() or 1
            torch.set_num_threads(ncpu if os.getloadavg()[0] < ncpu + 0.5 else max(1, ncpu // 2))
        t0 = time.time()
        acc.append(tr.step())
        tr.elapsed += time.time() - t0
        if tr.step_idx % cfg.log_every == 0:
            m = {k: float(np.mean([a[k] for a in acc])) for k in acc[0]}
            log(f"step {tr.step_idx} t {tr.elapsed:.0f}s thr {torch.get_num_threads()} "
                + " ".join(f"{k} {v:.4g}" for k, v in m.items()))
            acc = []
        if progress is not None:
            progress(int(tr.progress() * 1000), 1000)
        if checkpoint is not None and time.time() - last_save > cfg.checkpoint_every_s:
            _save(tr, checkpoint, export)
            last_save = time.time()
    if checkpoint is not None:
        _save(tr, checkpoint, export)
    log(f"done: step {tr.step_idx}, {tr.elapsed:.0f} s")


def _save(tr: Trainer, checkpoint: str | Path, export: str | Path | None) -> None:
    tr.save(checkpoint)
    if export is not None:
        tmp = Path(export).with_suffix(".tmp")
        torch.save({k: v.detach().cpu().clone() for k, v in tr.model.state_dict().items()}, tmp)
        os.replace(tmp, export)
