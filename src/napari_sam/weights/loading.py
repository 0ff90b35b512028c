"""Safe, strict loading of SAM weights.

- :func:`load_state_dict` reads a checkpoint with ``torch.load(weights_only=True)`` (a checkpoint
  never runs code) and unwraps the forms fine-tuned models ship in.
- :func:`load_model` builds the network for the architecture and loads the weights strictly; a
  registry name is fetched first (:mod:`napari_sam.weights.download`).

No napari, no Qt: this module runs in a plain Python process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from napari_sam.engine.device import pick_device
from napari_sam.engine.progress import Progress
from napari_sam.errors import CheckpointError, ChecksumError, ModelDownloadError, SamTypeError
from napari_sam.models.sam import Sam, build_model, infer_arch
from napari_sam.weights import download
from napari_sam.weights.registry import DEFAULT_MODEL, REGISTRY

__all__ = ["load_model", "load_state_dict"]


# --------------------------------------------------------------------------- loading

_WRAPPER_KEYS = ("model_state", "state_dict", "model")  # micro-sam/torch_em, lightning, generic
_KEY_PREFIXES = ("module.", "sam.")  # DataParallel, micro-sam's TrainableSAM
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _unwrap(obj: Any) -> Any:
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _short(exc: BaseException) -> str:
    """A one-line reason from torch.load's long messages."""
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else "unexpected end of file"
    return f"{type(exc).__name__}: {first[:200]}"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return a flat ``{key: tensor}`` state dict on the CPU.

    Uses ``torch.load(weights_only=True)``, so a checkpoint can never run code. Accepts the official
    state dict, dicts wrapping it under ``model_state``/``state_dict``/``model``, ``module.`` and
    ``sam.`` key prefixes; drops non-tensor entries. Raises FileNotFoundError for a missing file and
    :class:`CheckpointError` (with the path and the reason) for anything unreadable or unsafe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        found = _GLOBAL_RE.search(msg)
        if found and ("allowed global" in msg or "Unsupported global" in msg):
            reason = (
                f"it contains Python objects other than tensors ({found.group(1)}), which napari-sam "
                f"refuses to load because unpickling them can run code. If you trust the file, re-save "
                f"only its weights: torch.save(model.state_dict(), 'weights.pt')"
            )
        elif isinstance(exc, OSError):
            reason = f"it cannot be read ({exc})"
        else:
            reason = (
                f"it is not a readable PyTorch checkpoint; the file is corrupt or truncated ({_short(exc)})"
            )
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from exc

    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"cannot load checkpoint {path}: it holds a {type(obj).__name__}, not a state dict "
            f"(a dict of parameter names to tensors)"
        )
    state = {_strip(str(k)): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"cannot load checkpoint {path}: it holds a dict without tensors "
            f"(keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    return state


def _first(keys: list[str], n: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, checkpoint vs model ({_first(shapes, 3)})")
    hint = ""
    try:
        guess = infer_arch(dict(state))
        if guess != arch:
            hint = f" The weights look like architecture {guess!r}: try arch={guess!r}."
    except Exception:
        pass
    raise CheckpointError(f"checkpoint {path} does not fit architecture {arch!r}: {'; '.join(parts)}.{hint}")


def _resolve(name_or_path: str | Path, progress: Progress) -> tuple[Path, str | None, str]:
    """(file, registry arch or None, display name) for a registry name or a local file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        info = REGISTRY[name_or_path]
        return download.fetch(info.name, progress=progress), info.arch, info.name
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a file nor a registry model; known models: {', '.join(REGISTRY)}"
        )
    return path, None, path.name


def _on_base(part: dict[str, torch.Tensor], path: Path, base: str, progress: Progress) -> dict[str, torch.Tensor]:
    """The weights of registry model ``base`` with those of ``part`` (a file holding only the parts a
    fine-tune changed, e.g. ``lite_medsam_nuclei``'s prompt encoder and mask decoder) put in their
    place; every key of ``part`` must be one of ``base``'s, with its shape."""
    try:
        state = load_state_dict(_resolve(base, progress)[0])
    except ModelDownloadError as exc:
        kind = ChecksumError if isinstance(exc, ChecksumError) else ModelDownloadError
        raise kind(f"{path.name} holds a fine-tuned decoder for the image encoder of {base!r}: {exc}") from exc
    wrong = [k for k, v in part.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not fit the weights of {base!r} it completes: "
                              f"{len(wrong)} keys unknown or of another shape ({_first(wrong)})")
    state.update(part)
    return state


def load_model(
    name_or_path: str | Path | None = None,
    arch: str | None = None,
    device: str | torch.device | None = None,
    progress: Progress = None,
) -> Sam:
    """Build a SAM model and load its weights strictly; returns it in eval mode without gradients.

    ``name_or_path``: a registry name (fetched into the cache when needed, ``progress`` reports the
    download) or a checkpoint file; None means :data:`DEFAULT_MODEL`. ``arch``: None takes the
    registry's architecture, or ``infer_arch`` of the state dict for a file. ``device``: see
    :func:`napari_sam.pick_device`. The model gets ``checkpoint_path`` and ``model_name`` attributes.
    Raises :class:`CheckpointError` when the weights do not fit the architecture.
    """
    dev = pick_device(device)
    path, registry_arch, display = _resolve(DEFAULT_MODEL if name_or_path is None else name_or_path, progress)
    state = load_state_dict(path)
    base = REGISTRY[display].base if registry_arch is not None else None
    if base is not None:
        state = _on_base(state, path, base, progress)
    if arch is None:
        arch = registry_arch
    if arch is None:
        try:
            arch = infer_arch(state)
        except Exception as exc:
            raise CheckpointError(
                f"cannot tell the architecture of checkpoint {path} ({exc}); pass arch= explicitly"
            ) from exc
    model = build_model(arch)
    _check_fits(model, state, path, arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # anything _check_fits did not catch
        raise CheckpointError(f"checkpoint {path} does not fit architecture {arch!r}: {exc}") from exc
    del state
    model.eval().requires_grad_(False)
    model.checkpoint_path = path
    model.model_name = display
    return model.to(dev)


def as_model(model: Any, device: torch.device | str | None = None) -> torch.nn.Module:
    """A model, or a registry name / checkpoint path loaded with :func:`load_model` (what
    ``SamPredictor`` accepts); ``SamTypeError`` for anything else."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device)
    if not all(hasattr(model, a) for a in ("image_encoder", "prompt_encoder", "mask_decoder", "to")):
        raise SamTypeError(
            f"SamPredictor needs a SAM model, a registry name or a checkpoint path, got {type(model).__name__}"
            f"{'' if model is not None else ' (None)'}; load one with napari_sam.load_model(name), "
            f"e.g. SamPredictor(napari_sam.load_model('nano_nuclei')) or SamPredictor('nano_nuclei')"
        )
    return model
