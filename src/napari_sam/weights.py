"""Checkpoint registry, download and cache, and safe loading of SAM weights.

- :data:`REGISTRY` (from :mod:`napari_sam.registry`) maps a model name to a :class:`ModelInfo`.
- :func:`fetch` downloads a registry model with pooch into :func:`cache_dir` (the environment
  variable ``NAPARI_SAM_CACHE_DIR`` overrides platformdirs' user cache folder).
- :func:`load_state_dict` reads a checkpoint with ``torch.load(weights_only=True)`` (a checkpoint
  never runs code) and unwraps the forms fine-tuned models ship in.
- :func:`load_model` builds the network for the architecture and loads the weights strictly.

No napari, no Qt: this module runs in a plain Python process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch

from napari_sam._device import pick_device
from napari_sam.registry import DEFAULT_MODEL, REGISTRY, ModelInfo, get_model_info, list_models

if TYPE_CHECKING:
    from napari_sam.models.sam import Sam

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "REGISTRY",
    "CheckpointError",
    "ChecksumError",
    "ModelDownloadError",
    "ModelInfo",
    "cache_dir",
    "fetch",
    "get_model_info",
    "is_cached",
    "list_models",
    "load_model",
    "load_state_dict",
    "model_path",
]

CACHE_ENV = "NAPARI_SAM_CACHE_DIR"
Progress = Callable[[int, int], None]


class ModelDownloadError(RuntimeError):
    """A registry model could not be downloaded (network, server, or no known URL)."""


class ChecksumError(ModelDownloadError):
    """A download did not match the registry's hash; the file was not kept."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the architecture."""


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where downloaded weights live: ``$NAPARI_SAM_CACHE_DIR`` or the user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam"))


def _packaged_path(info: ModelInfo) -> Path:
    assert info.packaged is not None
    return Path(__file__).resolve().parent / info.packaged


def model_path(name: str) -> Path:
    """Where the weights of ``name`` are (or will be, once fetched or put there by hand)."""
    info = get_model_info(name)
    if info.packaged is not None:
        return _packaged_path(info)
    return cache_dir() / info.filename


def is_cached(name: str) -> bool:
    """True when the weights of ``name`` are on disk (packaged or in the cache); no hash check."""
    return model_path(name).is_file()


# --------------------------------------------------------------------------- download

_CHUNK = 1 << 20
# files whose hash was checked in this process: (path, size, mtime_ns, hash)
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _stat_key(path: Path, known_hash: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, known_hash)


class _CallbackBar:
    """The progress-bar object pooch drives (``total``, ``update``, ``reset``, ``close``),
    forwarding ``(done, total)`` in bytes to a callback, at most once per MiB plus the end."""

    def __init__(self, callback: Progress) -> None:
        self.callback = callback
        self.total = 0
        self.n = 0
        self._seen = 0
        self._last = -1

    def _emit(self, final: bool = False) -> None:
        done = min(self.n, self.total) if self.total else self.n
        if done <= self._last:
            return
        if final or done - self._last >= _CHUNK or (self.total and done >= self.total):
            self._last = done
            self.callback(done, self.total)

    def update(self, n: int) -> None:
        self.n += n
        self._seen = max(self._seen, self.n)
        self._emit()

    def reset(self) -> None:  # pooch resets, then updates by the total, at the end
        self.n = 0

    def close(self) -> None:
        self.n = max(self.n, self._seen)
        self._emit(final=True)


def _copy_file_url(url: str, output_file: str, bar: _CallbackBar | None) -> None:
    """``file://`` support (pooch has no downloader for it): copy in chunks with progress."""
    parsed = urlparse(url)
    unc = f"//{parsed.netloc}" if parsed.netloc and parsed.netloc != "localhost" else ""  # a share
    src = Path(unc + url2pathname(parsed.path))
    if bar is not None:
        bar.total = src.stat().st_size
    with open(src, "rb") as fin, open(output_file, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()


class _Downloader:
    """A pooch downloader: HTTP(S) with 1 MiB chunks, ``file://`` copies, else pooch's choice."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def __call__(self, url: str, output_file: str, pooch_obj: Any) -> None:
        import pooch

        bar = _CallbackBar(self.progress) if self.progress is not None else None
        scheme = urlparse(url).scheme.lower()
        if scheme == "file":
            _copy_file_url(url, output_file, bar)
        elif scheme in ("http", "https"):
            pooch.HTTPDownloader(progressbar=bar or False, chunk_size=_CHUNK)(url, output_file, pooch_obj)
        else:
            pooch.choose_downloader(url, progressbar=bar or False)(url, output_file, pooch_obj)


def _by_hand(info: ModelInfo, target: Path) -> str:
    source = (
        f"download {info.url}" if info.url else f"get {info.filename} from {info.homepage or 'its publisher'}"
    )
    return (
        f"To install it by hand, {source} on a machine with internet access and save it as\n"
        f"    {target}\n"
        f"(set the {CACHE_ENV} environment variable to use another cache folder), "
        f"or load the file by its path (load_model(path), or in the widget)."
    )


def fetch(name: str, progress: Progress | None = None) -> Path:
    """Return the local path of registry model ``name``, downloading it into :func:`cache_dir` once.

    ``progress(done_bytes, total_bytes)`` is called while downloading (total is 0 when unknown).
    Raises KeyError (unknown name), FileNotFoundError (packaged weights missing),
    :class:`ModelDownloadError` (network/server failure, or no URL and no file), and
    :class:`ChecksumError` (hash mismatch; the download is deleted).
    """
    info = get_model_info(name)
    if info.packaged is not None:
        path = _packaged_path(info)
        if not path.is_file():
            raise FileNotFoundError(
                f"the packaged weights of model {name!r} are missing: expected {path}. They ship with "
                f"napari-sam; reinstall the package (in a source checkout, the file is produced by "
                f"the training code in napari_sam/train), or pick another model."
            )
        return path

    target = cache_dir() / info.filename
    if info.url is None:
        if target.is_file():
            return target
        raise ModelDownloadError(f"model {name!r} has no direct download URL. " + _by_hand(info, target))

    known_hash = info.known_hash()
    if target.is_file():
        if known_hash is None or _stat_key(target, known_hash) in _VERIFIED:
            return target
    existed = target.is_file()

    import pooch

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = pooch.retrieve(
            info.url,
            known_hash=known_hash,
            fname=info.filename,
            path=target.parent,
            downloader=_Downloader(progress),
        )
    except ValueError as exc:  # pooch's hash check (or a URL scheme pooch does not know)
        if "hash" not in str(exc).lower():
            raise ModelDownloadError(f"could not download model {name!r} from {info.url}: {exc}") from exc
        target.unlink(missing_ok=True)
        raise ChecksumError(
            f"the download of model {name!r} from {info.url} does not match the registry's hash "
            f"({known_hash}); it was deleted and not kept in {target.parent}. {exc}\n"
            f"The file may be corrupted in transit (try again) or changed on the server. "
            + _by_hand(info, target)
        ) from exc
    except (OSError, EOFError) as exc:  # requests' errors are OSErrors
        note = ""
        if existed:
            note = f"The file already at {target} does not match the expected hash {known_hash}. "
        raise ModelDownloadError(
            f"could not download model {name!r} from {info.url}: {exc}. {note}" + _by_hand(info, target)
        ) from exc
    path = Path(out)
    if known_hash is not None:
        _VERIFIED.add(_stat_key(path, known_hash))
    return path


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
        from napari_sam.models.sam import infer_arch

        guess = infer_arch(dict(state))
        if guess != arch:
            hint = f" The weights look like architecture {guess!r}: try arch={guess!r}."
    except Exception:
        pass
    raise CheckpointError(f"checkpoint {path} does not fit architecture {arch!r}: {'; '.join(parts)}.{hint}")


def _resolve(name_or_path: str | Path, progress: Progress | None) -> tuple[Path, str | None, str]:
    """(file, registry arch or None, display name) for a registry name or a local file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        info = REGISTRY[name_or_path]
        return fetch(info.name, progress=progress), info.arch, info.name
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a file nor a registry model; known models: {', '.join(REGISTRY)}"
        )
    return path, None, path.name


def load_model(
    name_or_path: str | Path | None = None,
    arch: str | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> Sam:
    """Build a SAM model and load its weights strictly; returns it in eval mode without gradients.

    ``name_or_path``: a registry name (fetched into the cache when needed, ``progress`` reports the
    download) or a checkpoint file; None means :data:`DEFAULT_MODEL`. ``arch``: None takes the
    registry's architecture, or ``infer_arch`` of the state dict for a file. ``device``: see
    :func:`napari_sam.pick_device`. The model gets ``checkpoint_path`` and ``model_name`` attributes.
    Raises :class:`CheckpointError` when the weights do not fit the architecture.
    """
    from napari_sam.models.sam import build_model, infer_arch

    dev = pick_device(device)
    path, registry_arch, display = _resolve(DEFAULT_MODEL if name_or_path is None else name_or_path, progress)
    state = load_state_dict(path)
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
