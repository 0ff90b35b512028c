"""Download and cache of registry weights (pooch), and where packaged weights are.

- :func:`cache_dir`: ``$NAPARI_SAM_CACHE_DIR`` or platformdirs' user cache folder.
- :func:`fetch` downloads a registry model with pooch into :func:`cache_dir` once (hash-checked,
  with progress), or returns the packaged file (``napari_sam/_weights``), or the file inside the
  installed Python package that brings it (``ModelInfo.in_package``, hash-checked; LiteMedSAM).
- :func:`model_path` / :func:`is_cached`: where a model's file is, and whether it is there.

No torch, no napari, no Qt: listing and fetching models stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from napari_sam import DISTRIBUTION
from napari_sam.engine.progress import Progress
from napari_sam.errors import ChecksumError, ModelDownloadError
from napari_sam.weights.registry import ModelInfo, get_model_info

__all__ = ["CACHE_ENV", "cache_dir", "fetch", "is_cached", "model_path", "package_file"]

CACHE_ENV = "NAPARI_SAM_CACHE_DIR"
# the package folder, which ``ModelInfo.packaged`` paths are relative to
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


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
    return _PACKAGE_DIR / info.packaged


def package_file(in_package: str) -> Path | None:
    """The file ``"module/path/in/it"`` inside an installed Python package, or None when that
    package is not installed. The package is located (``importlib.util.find_spec`` of its top-level
    name), never imported: its own imports may need more than it declares."""
    top, _, rest = in_package.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / rest
        if path.is_file():
            return path
    return None


def model_path(name: str) -> Path:
    """Where the weights of ``name`` are (or will be, once fetched or put there by hand)."""
    info = get_model_info(name)
    if info.packaged is not None:
        return _packaged_path(info)
    if info.in_package is not None:
        found = package_file(info.in_package)
        if found is not None:
            return found
    return cache_dir() / info.filename


def is_cached(name: str) -> bool:
    """True when the weights of ``name`` are on disk (packaged, in an installed package, or in the
    cache), and those of the model it completes (``ModelInfo.base``); no hash check."""
    base = get_model_info(name).base
    return model_path(name).is_file() and (base is None or is_cached(base))


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

    def __init__(self, progress: Progress) -> None:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked(path: Path, sha256: str | None, name: str, where: str) -> Path:
    """``path`` once its sha256 matches (checked once per process and file state)."""
    if sha256 is None or _stat_key(path, sha256) in _VERIFIED:
        return path
    found = _sha256(path)
    if found != sha256:
        raise ChecksumError(
            f"the weights of model {name!r} at {path} ({where}) do not match the registry's sha256 "
            f"(expected {sha256}, found {found}): the file is damaged or another version. Reinstall "
            f"the package that brings it, or load a file you trust by its path."
        )
    _VERIFIED.add(_stat_key(path, sha256))
    return path


def _from_package(info: ModelInfo) -> Path:
    """The file of a model that comes with another pip package (``info.in_package``), hash-checked;
    else the same file put in the cache by hand; else :class:`ModelDownloadError` saying what to install."""
    assert info.in_package is not None
    top = info.in_package.split("/", 1)[0]
    path = package_file(info.in_package)
    if path is not None:
        return _checked(path, info.sha256, info.name, f"inside the installed package {top}")
    target = cache_dir() / info.filename
    if target.is_file():
        return _checked(target, info.sha256, info.name, "in the cache folder")
    extra = f"pip install '{DISTRIBUTION}[{info.extra}]'" if info.extra else f"install the Python package {top}"
    raise ModelDownloadError(
        f"model {info.name!r} comes with the Python package {top}, which is not installed here "
        f"(or lacks {info.in_package}). Install it with\n    {extra}\n"
        f"and restart napari; or put {info.filename} in {cache_dir()} by hand, "
        f"or load the file by its path (load_model(path), or in the widget)."
    )


def fetch(name: str, progress: Progress = None) -> Path:
    """Return the local path of registry model ``name``, downloading it into :func:`cache_dir` once.

    ``progress(done_bytes, total_bytes)`` is called while downloading (total is 0 when unknown).
    Raises KeyError (unknown name), FileNotFoundError (packaged weights missing),
    :class:`ModelDownloadError` (network/server failure, or no URL and no file, or the pip package
    that brings the file is not installed), and :class:`ChecksumError` (hash mismatch; a download
    is deleted, a file of an installed package is left alone).
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
        return _checked(path, info.sha256, info.name, "shipped with napari-sam")
    if info.in_package is not None:
        return _from_package(info)

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
