"""Training windows at the images' own resolution, as :class:`napari_sam.engine.tiling.TiledPredictor`
embeds them, and a cache of a frozen encoder's embeddings of such windows.

A model with a small input (LiteMedSAM: 256 x 256) sees a large image in native-resolution tiles: a
``side`` x ``side`` crop of the image (less at its edges or for a small image), placed at the top
left of the model's frame, normalised by the model's own rule over the crop, zero-padded. A
:func:`native_window` is exactly such a tile of an augmented training image, so a decoder trained
on them sees what it sees at inference.

With the encoder frozen its output for a window never changes, so :func:`build_cache` runs it once
per window and stores the embeddings (fp16) beside the windows' labels; training then runs only the
prompt encoder and the mask decoder (:class:`CachedWindows`, ``TrainConfig.cache``). The windows are
drawn once (seeded), so the geometric and intensity augmentation is fixed per cached window; the
objects, prompts and corrections still vary every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import (
    PIXEL_MEAN,
    PIXEL_STD,
    Sample,
    Window,
    _augment_geometry,
    _augment_intensity,
    read_dsb2018_index,
    to_rgb_uint8,
)

#: windows per training image by (modality, long side): large images and the scarce modalities get more
DEFAULT_WINDOWS = {"brightfield": 6, "stained": 1, "fluorescence": 1}


def load_native_dsb2018(root: str | Path, ids: list[str]) -> list[Sample]:
    """dsb2018 pairs at their own resolution: ``image`` (H, W, 3) uint8 as the predictor converts it,
    ``labels`` (H, W) int32."""
    root = Path(root)
    rows = {r["id"]: r for r in read_dsb2018_index(root)}
    out = []
    for i in ids:
        img = to_rgb_uint8(np.array(Image.open(root / "images" / f"{i}.png")))
        lab = np.array(Image.open(root / "labels" / f"{i}.png")).astype(np.int32)
        out.append(Sample(i, img, lab, rows[i]["modality"]))
    return out


def windows_for(sample: Sample, side: int, per_modality: dict[str, int] | None = None) -> int:
    """How many cached windows ``sample`` gets: its modality's count, and one per ~4 tiles of area
    for images larger than a tile (at most 3 from the area)."""
    base = (per_modality or DEFAULT_WINDOWS).get(sample.modality, 1)
    h, w = sample.labels.shape
    by_area = min(3, max(1, round(h * w / (4 * side * side))))
    return max(base, by_area)


def native_window(sample: Sample, rng: np.random.Generator, side: int = 256, augment: bool = True,
                  scale_prob: float = 0.3, scale_range: tuple[float, float] = (0.8, 1.25),
                  small_prob: float = 0.15, min_area: int = 16) -> Window | None:
    """A tile of the augmented sample: a crop of at most ``side`` px a side at a random place, at
    the top left of a ``side`` x ``side`` frame, zero-padded (``valid`` marks the crop). With
    probability ``small_prob`` the crop is 64 ... side px (a small image embedded at its own scale).
    None when no crop with an object of ``min_area`` px is found in a few tries."""
    for _ in range(5):
        img, lab = sample.image, sample.labels
        if augment:
            img, lab = _augment_geometry(img, lab, rng, side, scale_prob, scale_range)
        h, w = lab.shape
        s = int(rng.integers(64, side)) if augment and side > 64 and rng.random() < small_prob else side
        ch, cw = min(s, h), min(s, w)
        cy, cx = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop_lab = lab[cy : cy + ch, cx : cx + cw]
        ids, counts = np.unique(crop_lab[crop_lab > 0], return_counts=True)
        if not (counts >= min_area).any():
            continue
        crop = np.ascontiguousarray(img[cy : cy + ch, cx : cx + cw])
        if augment:
            crop = _augment_intensity(crop, rng)
        im = np.zeros((side, side, 3), np.uint8)
        lb = np.zeros((side, side), np.int32)
        valid = np.zeros((side, side), bool)
        im[:ch, :cw], lb[:ch, :cw], valid[:ch, :cw] = crop, crop_lab, True
        return Window(im, lb, valid, (0, 0))
    return None


def window_input(w: Window, normalize: str = "mean_std") -> torch.Tensor:
    """The encoder's input ``(3, side, side)`` for a window: SAM's mean/std, or LiteMedSAM's
    min-max to [0, 1] over the valid crop (as ``engine.transforms.model_input`` over a tile);
    zero on the padding."""
    x = w.image.astype(np.float32)
    if normalize == "min_max":
        v = x[w.valid]
        lo, hi = float(v.min()), float(v.max())
        x = (x - lo) / max(hi - lo, 1e-8)
    else:
        x = (x - PIXEL_MEAN) / PIXEL_STD
    x[~w.valid] = 0.0
    return torch.from_numpy(x).permute(2, 0, 1)


def draw_windows(samples: list[Sample], seed: int = 0, side: int = 256,
                 per_modality: dict[str, int] | None = None) -> list[tuple[int, Window]]:
    """The windows :func:`build_cache` embeds, in its order: (sample index, window) pairs, seeded; the
    same arguments draw the same windows (``train distill`` pairs them with a cache's embeddings)."""
    rng = np.random.default_rng(seed)
    plan = [k for k, s in enumerate(samples) for _ in range(windows_for(s, side, per_modality))]
    rng.shuffle(plan)
    wins = []
    for k in plan:
        w = None
        while w is None:
            w = native_window(samples[k], rng, side)
        wins.append((k, w))
    return wins


def build_cache(model: torch.nn.Module, samples: list[Sample], out: str | Path, seed: int = 0,
                side: int = 256, shard: int = 32, per_modality: dict[str, int] | None = None,
                part: tuple[int, int] = (0, 1), log: Callable[[str], None] = print) -> int:
    """Draw :func:`windows_for` native windows per sample (seeded, shuffled across samples), embed
    each with ``model.image_encoder`` and write shards ``out/shard_NNNN.pt`` of ``shard`` windows:
    ``{"embeddings": (n, C, h, w) fp16, "labels": (n, side, side) int32, "valid": (n, side, side)
    bool, "ids": [sample id], "modality": [...]}``. Shards already there are kept (resumable).
    ``part=(i, n)`` embeds only the shards ``j`` with ``j % n == i``, so ``n`` processes can build
    one cache together (every process draws the same windows). Returns the number of windows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    normalize = getattr(getattr(model, "preprocessing", None), "normalize", "mean_std")
    wins = draw_windows(samples, seed, side, per_modality)  # all first, so a resumed run draws the same ones
    model.eval()
    for j, start in enumerate(range(0, len(wins), shard)):
        path = out / f"shard_{j:04d}.pt"
        if path.exists() or j % part[1] != part[0]:
            continue
        chunk = wins[start : start + shard]
        with torch.inference_mode():
            emb = torch.cat([model.image_encoder(window_input(w, normalize)[None]) for _, w in chunk])
        torch.save({"embeddings": emb.half(), "labels": torch.from_numpy(np.stack([w.labels for _, w in chunk])),
                    "valid": torch.from_numpy(np.stack([w.valid for _, w in chunk])),
                    "ids": [samples[k].id for k, _ in chunk], "modality": [samples[k].modality for k, _ in chunk]},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        log(f"cached {min(start + shard, len(wins))}/{len(wins)} windows")
    return len(wins)


class CachedWindows:
    """Windows with their encoder embeddings from :func:`build_cache` shards, drawn at random."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.loaded = Path(folder), set()
        self.embeddings, self.labels, self.valid, self.modality = None, None, None, []
        if not self.refresh():
            raise FileNotFoundError(f"no shard_*.pt in {folder}: run `python -m napari_sam.train cache` first")

    def refresh(self) -> int:
        """Load the shards written since the last call (a cache still being built); returns how many."""
        new = [p for p in sorted(self.folder.glob("shard_*.pt")) if p.name not in self.loaded]
        if not new:
            return 0
        parts = [torch.load(p, weights_only=True) for p in new]
        old = [] if self.embeddings is None else [self.embeddings]
        self.embeddings = torch.cat(old + [p["embeddings"] for p in parts])
        old = [] if self.labels is None else [torch.from_numpy(self.labels)]
        self.labels = torch.cat(old + [p["labels"] for p in parts]).numpy()
        old = [] if self.valid is None else [torch.from_numpy(self.valid)]
        self.valid = torch.cat(old + [p["valid"] for p in parts]).numpy()
        self.modality += sum((p["modality"] for p in parts), [])
        self.loaded |= {p.name for p in new}
        return len(new)

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[list[Window], torch.Tensor]:
        """``n`` random windows (image left empty: the embedding stands for it) and their
        embeddings ``(n, C, h, w)`` float32."""
        idx = rng.integers(len(self), size=n)
        side = self.labels.shape[1]
        wins = [Window(np.zeros((0, 0, 3), np.uint8), self.labels[i], self.valid[i], (0, 0)) for i in idx]
        assert all(w.labels.shape == (side, side) for w in wins)
        return wins, self.embeddings[torch.from_numpy(idx)].float()
