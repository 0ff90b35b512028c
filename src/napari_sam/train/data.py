"""Image + instance-label data for training: loading, SAM preprocessing, augmentation, windows.

Images become what the predictor feeds the encoder: gray -> RGB uint8, longest side resized to
``img_size`` with PIL bilinear (exactly :class:`napari_sam.engine.transforms.ResizeLongestSide`), then
normalized and zero-padded at the bottom/right. Labels are resized with nearest neighbour.
Arrays are (row, col) = (y, x); SAM prompts built from them are (x, y).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine.images import to_sam_image
from ..engine.transforms import ResizeLongestSide

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
SPLIT_FILE = Path(__file__).with_name("dsb2018_split.json")
SCALE_RANGE = (0.7, 1.4)  # default range of the random rescaling of a sample (log-uniform)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(newh, neww) with the longest side ``long_side`` (as ``ResizeLongestSide.get_preprocess_shape``)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H,W) or (H,W,C) image of any dtype -> (H,W,3) uint8, exactly as the predictor converts it
    (:func:`napari_sam.engine.images.to_sam_image`)."""
    return np.ascontiguousarray(to_sam_image(np.asarray(image)))


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """uint8 (H,W,3) -> uint8 (h',w',3): :class:`napari_sam.engine.transforms.ResizeLongestSide` (PIL bilinear)."""
    return ResizeLongestSide(long_side).apply_image(image)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label image (H,W) to ``shape`` (h',w')."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


@dataclass
class Sample:
    """One preprocessed pair: ``image`` (h,w,3) uint8 and ``labels`` (h,w) int32, longest side = img_size."""

    id: str
    image: np.ndarray
    labels: np.ndarray
    modality: str = "unknown"


def prepare(image: np.ndarray, labels: np.ndarray, img_size: int, sid: str = "", modality: str = "unknown") -> Sample:
    """Preprocess a raw pair (any dtype image, (H,W) labels) into a :class:`Sample`."""
    img = resize_image(to_rgb_uint8(image), img_size)
    lab = resize_labels(np.asarray(labels).astype(np.int32), img.shape[:2])
    return Sample(sid, img, lab, modality)


def read_dsb2018_index(root: str | Path) -> list[dict[str, str]]:
    """Rows of ``root/index.csv`` (id, height, width, modality, channels, nuclei)."""
    with open(Path(root) / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def make_split(root: str | Path, val_fraction: float = 0.12, seed: int = 0) -> dict[str, list[str]]:
    """Seeded stratified split: ``ceil``-ish ``val_fraction`` of each modality (at least 2) to validation."""
    rows = read_dsb2018_index(root)
    by_mod: dict[str, list[str]] = {}
    for r in rows:
        by_mod.setdefault(r["modality"], []).append(r["id"])
    rng = random.Random(seed)
    val: list[str] = []
    for mod in sorted(by_mod):
        ids = sorted(by_mod[mod])
        rng.shuffle(ids)
        val += ids[: max(2, round(len(ids) * val_fraction))]
    val_set = set(val)
    train = sorted(r["id"] for r in rows if r["id"] not in val_set)
    return {"seed": seed, "val_fraction": val_fraction, "train": train, "val": sorted(val)}


def load_split(root: str | Path | None = None) -> dict[str, list[str]]:
    """The packaged split (``dsb2018_split.json``); created from ``root`` if missing."""
    if SPLIT_FILE.exists():
        return json.loads(SPLIT_FILE.read_text())
    if root is None:
        raise FileNotFoundError(SPLIT_FILE)
    split = make_split(root)
    SPLIT_FILE.write_text(json.dumps(split, indent=1))
    return split


def load_dsb2018(root: str | Path, ids: list[str] | None = None, img_size: int = 512,
                 cache_dir: str | Path | None = "/tmp/napari_sam_cache") -> list[Sample]:
    """Load (and cache as .npz) dsb2018 pairs preprocessed to ``img_size``; ``ids`` None = all."""
    root = Path(root)
    rows = {r["id"]: r for r in read_dsb2018_index(root)}
    ids = sorted(rows) if ids is None else list(ids)
    cache = Path(cache_dir) / f"dsb2018_{img_size}.npz" if cache_dir else None
    store: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            store = {k: z[k] for k in z.files}
    out, dirty = [], False
    for i in ids:
        if f"img_{i}" not in store:
            raw = np.array(Image.open(root / "images" / f"{i}.png"))
            lab = np.array(Image.open(root / "labels" / f"{i}.png"))
            s = prepare(raw, lab, img_size, i)
            store[f"img_{i}"], store[f"lab_{i}"] = s.image, s.labels.astype(np.uint16)
            dirty = True
        out.append(Sample(i, store[f"img_{i}"], store[f"lab_{i}"].astype(np.int32), rows[i]["modality"]))
    if cache is not None and dirty:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **store)
    return out


def _read_any(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    return np.array(Image.open(path))


def read_pairs(images: str | Path | list, labels: str | Path | list) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Raw (id, image, labels) 2D pairs from two folders (files matched by sorted name), two tif
    stacks ((n,H,W[,C]) image, (n,H,W) labels) or two lists of arrays; slices without objects are dropped."""
    def expand(src) -> list[np.ndarray]:
        if isinstance(src, (list, tuple)):
            return [np.asarray(a) for a in src]
        p = Path(src)
        if p.is_dir():
            return [_read_any(f) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")]
        return [_read_any(p)]

    imgs, labs = expand(images), expand(labels)
    if len(imgs) != len(labs):
        raise ValueError(f"{len(imgs)} images but {len(labs)} label images")
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    for k, (im, lb) in enumerate(zip(imgs, labs, strict=True)):
        if lb.ndim == 3:  # a stack: (n, H, W) labels with (n, H, W[, C]) image
            if im.shape[0] != lb.shape[0]:
                raise ValueError(f"image stack {im.shape} does not match label stack {lb.shape}")
            out += [(f"{k}:{j}", im[j], lb[j]) for j in range(lb.shape[0]) if lb[j].max() > 0]
        elif lb.max() > 0:
            out.append((str(k), im, lb))
    if not out:
        raise ValueError("no labelled objects found in the given labels")
    return out


def load_pairs(images: str | Path | list, labels: str | Path | list, img_size: int) -> list[Sample]:
    """:func:`read_pairs`, preprocessed into :class:`Sample` s for training at ``img_size``."""
    return [prepare(im, lb, img_size, sid) for sid, im, lb in read_pairs(images, labels)]


@dataclass
class Window:
    """A training crop: ``image`` (w,w,3) uint8, ``labels`` (w,w) int32, ``valid`` (w,w) bool (False on
    the zero padding), ``offset`` (y0, x0) of the crop in the padded ``img_size`` frame (multiples of 8)."""

    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    offset: tuple[int, int]


def _augment_geometry(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, img_size: int,
                      scale_prob: float, scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if rng.random() < scale_prob:
        s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
        h, w = lab.shape
        nh, nw = max(16, int(h * s + 0.5)), max(16, int(w * s + 0.5))
        img = np.array(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
        lab = resize_labels(np.ascontiguousarray(lab), (nh, nw))
    return img, lab


def _augment_intensity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    if rng.random() < 0.1:
        x = np.repeat(x.mean(2, keepdims=True), 3, axis=2)
    if rng.random() < 0.3:
        x = 255.0 * (x / 255.0) ** float(np.exp(rng.uniform(-0.4, 0.4)))
    c, b = rng.uniform(0.7, 1.3), rng.uniform(-20, 20)
    m = x.mean()
    x = (x - m) * c + m + b
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def random_window(sample: Sample, rng: np.random.Generator, window: int, img_size: int,
                  augment: bool = True, scale_prob: float = 0.3, min_area: int = 16,
                  scale_range: tuple[float, float] = SCALE_RANGE) -> Window | None:
    """A random ``window`` x ``window`` crop of the augmented, padded sample with at least one object
    of ``min_area`` pixels; None if none found in a few tries. ``window == img_size`` = the whole frame."""
    for _ in range(5):
        img, lab = sample.image, sample.labels
        if augment:
            img, lab = _augment_geometry(img, lab, rng, img_size, scale_prob, scale_range)
        h, w = lab.shape
        ys = max(0, min(h, img_size) - window) // 8
        xs = max(0, min(w, img_size) - window) // 8
        # the crop position in the content, and its position in the padded frame (clamped, 8-aligned)
        cy = int(rng.integers(0, max(0, h - window) + 1))
        cx = int(rng.integers(0, max(0, w - window) + 1))
        y0 = min(cy // 8, ys) * 8 if window < img_size else 0
        x0 = min(cx // 8, xs) * 8 if window < img_size else 0
        if window >= img_size:
            cy = cx = 0
        im = np.zeros((window, window, 3), np.uint8)
        lb = np.zeros((window, window), np.int32)
        valid = np.zeros((window, window), bool)
        ph, pw = min(window, h - cy), min(window, w - cx)
        im[:ph, :pw] = img[cy:cy + ph, cx:cx + pw]
        lb[:ph, :pw] = lab[cy:cy + ph, cx:cx + pw]
        valid[:ph, :pw] = True
        ids, counts = np.unique(lb[lb > 0], return_counts=True)
        if (counts >= min_area).any():
            if augment:
                im = _augment_intensity(im, rng)
            return Window(im, lb, valid, (y0, x0))
    return None
