"""Tests for napari_sam.weights: registry, download/cache (local servers only), safe loading."""

from __future__ import annotations

import builtins
import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

import napari_sam.weights
from napari_sam.errors import CheckpointError, ChecksumError, ModelDownloadError
from napari_sam.weights import download, loading, registry
from napari_sam.weights.download import fetch, is_cached
from napari_sam.weights.loading import load_state_dict
from napari_sam.weights.registry import ModelInfo

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(download.CACHE_ENV, str(cache))
    return cache


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'srv'``; yields (base_url, dir, requests)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = type("H", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _register(monkeypatch, url: str | None, sha256: str | None = None, **kw) -> str:
    info = ModelInfo(
        name="tiny_test",
        arch=kw.pop("arch", "vit_t"),
        url=url,
        sha256=sha256,
        size_mb=0.01,
        licence="CC0",
        description="test entry",
        filename="tiny_test.pt",
        **kw,
    )
    monkeypatch.setitem(registry.REGISTRY, info.name, info)
    return info.name


def _payload(root: Path, n: int = 3 * (1 << 20) + 123) -> tuple[Path, str]:
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = root / "tiny.bin"
    path.write_bytes(data.numpy().tobytes())
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- registry


def test_registry_entries():
    names = set(registry.REGISTRY)
    expected = {"vit_b", "vit_l", "vit_h", "vit_t", "medsam_vit_b", "nano_nuclei"}
    expected |= {f"vit_{s}_lm" for s in "tblh"} | {f"vit_{s}_em_organelles" for s in "tbl"}
    assert expected <= names
    assert registry.DEFAULT_MODEL in registry.REGISTRY
    assert [m.name for m in registry.list_models()] == list(registry.REGISTRY)
    for name, info in registry.REGISTRY.items():
        assert info.name == name and info.filename and info.licence and info.description
        assert info.sha256 is None or len(info.sha256) == 64
        if info.url is None and info.packaged is None and info.in_package is None:  # by hand only
            assert "hand" in info.description
    for name in ("nano_nuclei", "nano_nuclei_v1"):
        nano = registry.REGISTRY[name]
        assert nano.arch == "nano" and nano.packaged == f"_weights/{name}.pt"
    assert registry.REGISTRY["vit_b"].url.endswith("sam_vit_b_01ec64.pth")


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="vit_b"):
        fetch("no_such_model")
    with pytest.raises(KeyError, match="known models"):
        is_cached("no_such_model")


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "x"))
    assert download.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(download.CACHE_ENV)
    assert "napari-sam" in str(download.cache_dir())


def test_packaged_missing_is_clear(monkeypatch):
    _register(monkeypatch, None, packaged="_weights/does_not_exist.pt", arch="nano")
    assert not is_cached("tiny_test")
    with pytest.raises(FileNotFoundError, match="packaged weights .* missing"):
        fetch("tiny_test")


def test_no_url_says_where_to_put_file(monkeypatch, _cache):
    _register(monkeypatch, None)
    with pytest.raises(ModelDownloadError, match="by hand") as err:
        fetch("tiny_test")
    assert str(_cache / "tiny_test.pt") in str(err.value)
    _cache.mkdir()
    (_cache / "tiny_test.pt").write_bytes(b"x")
    assert is_cached("tiny_test") and fetch("tiny_test") == _cache / "tiny_test.pt"


# --------------------------------------------------------------------------- fetch


def test_fetch_http_progress_and_cache_reuse(server, monkeypatch, _cache):
    base, root, requests = server
    src, sha = _payload(root)
    name = _register(monkeypatch, f"{base}/tiny.bin", sha256=sha)
    assert not is_cached(name)
    calls: list[tuple[int, int]] = []
    path = fetch(name, progress=lambda done, total: calls.append((done, total)))
    assert path == _cache / "tiny_test.pt" and path.read_bytes() == src.read_bytes()
    assert is_cached(name)
    size = src.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(requests) == 1
    # second call: no download (neither in this process nor after forgetting the verified memo)
    assert fetch(name) == path
    download._VERIFIED.clear()
    assert fetch(name) == path
    assert len(requests) == 1


def test_fetch_without_hash(server, monkeypatch):
    base, root, requests = server
    src, _ = _payload(root, 1000)
    name = _register(monkeypatch, f"{base}/tiny.bin")
    assert fetch(name).read_bytes() == src.read_bytes()
    fetch(name)
    assert len(requests) == 1


def test_fetch_hash_mismatch_keeps_nothing(server, monkeypatch, _cache):
    base, root, _ = server
    _payload(root, 5000)
    name = _register(monkeypatch, f"{base}/tiny.bin", sha256="0" * 64)
    with pytest.raises(ChecksumError, match="does not match") as err:
        fetch(name)
    assert isinstance(err.value, ModelDownloadError)
    assert not is_cached(name)
    assert list(_cache.iterdir()) == []  # no temporary file left behind either


def test_fetch_unreachable_says_where_to_put_file(monkeypatch, _cache):
    url = f"http://127.0.0.1:{_closed_port()}/tiny.bin"
    name = _register(monkeypatch, url, sha256="0" * 64)
    with pytest.raises(ModelDownloadError) as err:
        fetch(name)
    msg = str(err.value)
    assert url in msg and str(_cache / "tiny_test.pt") in msg and download.CACHE_ENV in msg
    assert not is_cached(name)


def test_fetch_http_404(server, monkeypatch):
    base, _, _ = server
    name = _register(monkeypatch, f"{base}/missing.bin")
    with pytest.raises(ModelDownloadError, match="404"):
        fetch(name)


def test_fetch_file_url(tmp_path, monkeypatch, _cache):
    """pooch has no file:// downloader; napari-sam's own downloader copies (for local mirrors)."""
    src, sha = _payload(tmp_path)
    name = _register(monkeypatch, src.as_uri(), sha256=sha)
    calls: list[tuple[int, int]] = []
    path = fetch(name, progress=lambda d, t: calls.append((d, t)))
    assert path.read_bytes() == src.read_bytes()
    assert calls[-1] == (src.stat().st_size,) * 2
    missing = _register(monkeypatch, (tmp_path / "nope.bin").as_uri())
    (_cache / "tiny_test.pt").unlink()
    with pytest.raises(ModelDownloadError, match="nope.bin"):
        fetch(missing)


# --------------------------------------------------------------------------- load_state_dict


def _sd() -> dict[str, torch.Tensor]:
    return {"image_encoder.w": torch.randn(3, 2), "mask_decoder.b": torch.arange(4)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model_state": sd, "decoder_state": {"x": torch.zeros(1)}, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model_state": {f"sam.{k}": v for k, v in sd.items()}},  # micro-sam training
        lambda sd: {**{f"module.{k}": v for k, v in sd.items()}, "note": "text", "n": 3},
    ],
    ids=["official", "model_state", "model", "state_dict+module", "sam_prefix", "non_tensors"],
)
def test_load_state_dict_formats(tmp_path, wrap):
    sd = _sd()
    torch.save(wrap(sd), tmp_path / "ck.pt")
    assert _same(load_state_dict(tmp_path / "ck.pt"), sd)


def test_load_state_dict_corrupt(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint" * 50)
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_state_dict(bad)
    assert str(bad) in str(err.value)


def test_load_state_dict_truncated(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(_sd() | {"big": torch.zeros(10000)}, good)
    data = good.read_bytes()
    for n, cut in enumerate((len(data) // 2, 0)):
        path = tmp_path / f"cut{n}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated") as err:
            load_state_dict(path)
        assert str(path) in str(err.value)


class _RunsCode:
    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_load_state_dict_refuses_code(tmp_path):
    evil = _RunsCode()
    evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _sd(), "payload": evil}, path)
    with pytest.raises(CheckpointError, match="refuses") as err:
        load_state_dict(path)
    assert str(path) in str(err.value) and "exec" in str(err.value)
    assert not evil.marker.exists()


@pytest.mark.parametrize("content", [[torch.zeros(2)], torch.zeros(2), {"a": 1, "b": "x"}])
def test_load_state_dict_not_a_state_dict(tmp_path, content):
    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="state dict|without tensors") as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_load_state_dict_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- load_model


@pytest.fixture(scope="module")
def sam_models():
    import napari_sam.models.sam

    return napari_sam.models.sam


@pytest.fixture(scope="module")
def official_vit_b(tmp_path_factory, reference) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random vit_b built by the official package, saved as the official checkpoints are."""
    torch.manual_seed(0)
    sd = reference.sam_model_registry["vit_b"]().state_dict()
    path = tmp_path_factory.mktemp("ck") / "sam_vit_b_random.pth"
    torch.save(sd, path)
    return path, sd


def test_load_model_official_round_trip(sam_models, official_vit_b):
    path, sd = official_vit_b
    model = loading.load_model(path, device="cpu")
    assert model.arch == "vit_b" and not model.training
    assert model.checkpoint_path == path and model.model_name == path.name
    assert all(not p.requires_grad for p in model.parameters())
    assert _same(model.state_dict(), sd)


def test_load_model_wrong_arch(sam_models, official_vit_b):
    path, _ = official_vit_b
    with pytest.raises(CheckpointError) as err:
        loading.load_model(path, arch="vit_l", device="cpu")
    msg = str(err.value)
    assert str(path) in msg and "'vit_l'" in msg and "image_encoder." in msg
    assert "arch='vit_b'" in msg  # the hint from infer_arch


@pytest.fixture(scope="module")
def vit_t_sd(sam_models) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return sam_models.build_model("vit_t").state_dict()


def test_load_model_missing_keys(tmp_path, vit_t_sd):
    sd = {k: v for k, v in vit_t_sd.items() if not k.startswith("mask_decoder.iou_prediction_head")}
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing keys .*iou_prediction_head") as err:
        loading.load_model(tmp_path / "partial.pt", arch="vit_t", device="cpu")
    assert "partial.pt" in str(err.value)


def test_load_model_unknown_arch_in_file(tmp_path, sam_models):
    torch.save(_sd(), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="arch="):
        loading.load_model(tmp_path / "odd.pt", device="cpu")


def test_load_model_registry_name(tmp_path, monkeypatch, vit_t_sd):
    """Registry name -> fetch (file:// here) -> wrapped micro-sam format -> strict load."""
    src = tmp_path / "vit_t_lm.pt"
    torch.save({"model_state": {f"sam.{k}": v for k, v in vit_t_sd.items()}}, src)
    name = _register(monkeypatch, src.as_uri(), arch="vit_t")
    model = loading.load_model(name, device="cpu")
    assert model.model_name == name and _same(model.state_dict(), vit_t_sd)
    with pytest.raises(FileNotFoundError, match="known models"):
        loading.load_model("vit_q", device="cpu")


def test_load_model_default(sam_models):
    path = download.model_path(registry.DEFAULT_MODEL)
    if path.is_file():
        model = loading.load_model(device="cpu")
        assert model.arch == registry.REGISTRY[registry.DEFAULT_MODEL].arch
    else:
        with pytest.raises(FileNotFoundError, match="packaged weights"):
            loading.load_model(device="cpu")


def test_docs_list_every_model():
    doc = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    text = doc.read_text()
    for info in registry.list_models():
        assert f"`{info.name}`" in text, info.name
        if info.url is not None:
            assert info.url in text, info.url


def test_package_reexports_its_modules():
    """``napari_sam.weights`` keeps the former module's names, lazily, as the very objects of its modules."""
    assert napari_sam.weights.load_model is loading.load_model
    assert napari_sam.weights.fetch is download.fetch
    assert napari_sam.weights.REGISTRY is registry.REGISTRY
    assert napari_sam.weights.CheckpointError is CheckpointError
    assert set(napari_sam.weights.__all__) <= set(dir(napari_sam.weights))
    with pytest.raises(AttributeError):
        napari_sam.weights.no_such_name  # noqa: B018
