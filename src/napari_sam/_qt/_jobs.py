"""Long jobs of the widget (3D propagation, precompute, segment everything): one at a time, cancellable.

``JobRunner.start(name, job, on_done)`` runs ``job(progress, cancel)`` in a napari ``thread_worker``;
``progress(done, total)`` calls from the worker thread arrive on the GUI thread as the ``progressed``
signal and drive a napari ``progress`` bar (activity dock); ``cancel`` is a ``threading.Event`` set
by :meth:`JobRunner.cancel`. ``on_done(result)`` runs on the GUI thread (that is where layers are
written). ``JobPanel`` is the base of the panels: a progress bar, a status line, a Cancel button.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam._qt._threads import start as start_worker
from napari_sam.errors import SamUserError


class JobRunner(QObject):
    """Runs one long job at a time (see the module doc). Signals: ``progressed(done, total)``,
    ``running(bool)``, ``done(name, result)`` (last of all, after ``on_done`` and ``running(False)``;
    result None on error)."""

    progressed = Signal(int, int)
    running = Signal(bool)
    done = Signal(str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.name = ""
        self.cancel_event = threading.Event()
        self._pbar: progress | None = None
        self._outcome: tuple[str, Any] = ("", None)
        self.closed = False
        self.progressed.connect(self._on_progress)

    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    def start(self, name: str, job: Callable[..., Any], on_done: Callable[[Any], Any] | None = None) -> bool:
        """Run ``job(progress, cancel)`` in a worker; False (with a warning) if another job runs."""
        if self.worker is not None:
            show_warning(f"SAM: wait for {self.name!r} to finish (or cancel it)")
            return False
        self.cancel_event = event = threading.Event()

        def run() -> Any:
            return job(lambda d, t: self.progressed.emit(int(d), int(t)), event)

        worker = create_worker(run, _ignore_errors=True)
        self._pbar = progress(total=0, desc=f"SAM: {name}")
        self.worker, self.name, self._outcome = worker, name, (name, None)
        worker.returned.connect(lambda result: self._on_returned(name, result, on_done))
        worker.errored.connect(lambda exc: self._on_errored(name, exc))
        worker.finished.connect(self._on_finished)
        self.running.emit(True)
        start_worker(worker)
        return True

    def cancel(self) -> None:
        """Ask the running job to stop (engines check between slices / batches)."""
        self.cancel_event.set()

    def _on_progress(self, done: int, total: int) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        if pbar.total != total:
            pbar.total = total
        pbar.update(done - pbar.n)

    def _on_returned(self, name: str, result: Any, on_done: Callable[[Any], Any] | None) -> None:
        if self.closed:
            return
        try:
            out = on_done(result) if on_done is not None else result
        except SamUserError as exc:
            show_warning(str(exc))
            out = None
        except Exception as exc:  # a failed write must not break the event loop
            show_error(f"SAM: {name} failed: {type(exc).__name__}: {exc}")
            out = None
        self._outcome = (name, out)

    def _on_errored(self, name: str, exc: BaseException) -> None:
        if self.closed:
            return
        if self.cancel_event.is_set() and not isinstance(exc, SamUserError):
            return  # failed after it was cancelled (e.g. the model moved to another device under it): said then
        if isinstance(exc, SamUserError):  # e.g. refused: a console call holds the model
            show_warning(str(exc))
        else:
            show_error(f"SAM: {name} failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self.closed:
            self.running.emit(False)
            self.done.emit(*self._outcome)

    def close(self) -> None:
        """Cancel the running job and ignore its result; its bar leaves the activity dock now (the
        worker's ``finished`` may never arrive once the window is gone)."""
        self.cancel()
        self.closed = True
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None


class JobPanel(QWidget):
    """Base of the long-job panels: ``start(name, make_job)``, progress bar, status, Cancel button."""

    def __init__(self, sam: Any, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sam, self.jobs = sam, jobs
        self._mine = False
        self.column = QVBoxLayout(self)
        self.column.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(jobs.cancel)
        jobs.progressed.connect(self._on_progress)
        jobs.running.connect(self._on_running)
        self.action_buttons: list[QPushButton] = []

    def finish_layout(self) -> None:
        """Append the progress bar, Cancel and the status line (call after the panel's own widgets)."""
        self.column.addWidget(self.progress_bar)
        self.column.addWidget(self.cancel_button)
        self.column.addWidget(self.status_label)

    def start(self, name: str, make: Callable[[], tuple[Callable[..., Any], Callable[[Any], Any]]],
              report: Callable[[Any], str]) -> bool:
        """``make() -> (job, apply)`` on the GUI thread (user errors become warnings), then run ``job``
        in the background and ``apply`` its result; the status shows ``report(applied)``."""
        try:
            job, apply = make()
        except SamUserError as exc:
            show_warning(str(exc))
            return False

        def on_done(result: Any) -> Any:
            try:
                out = apply(result)
            except SamUserError as exc:  # e.g. its layer was removed meanwhile: the runner warns too
                self.set_status(str(exc).removeprefix("SAM: "))
                raise
            self.set_status(report(out))
            return out

        self._mine = True  # before start(): its `running` signal enables this panel's Cancel
        self._mine = self.jobs.start(name, job, on_done)
        if self._mine:
            self.set_status(f"{name} ...")
        return self._mine

    def set_status(self, text: str) -> None:
        try:
            self.status_label.setText(text)
        except RuntimeError:
            pass

    def _on_progress(self, done: int, total: int) -> None:
        if self._mine:
            self.progress_bar.setMaximum(max(total, 1))
            self.progress_bar.setValue(done)

    def _on_running(self, on: bool) -> None:
        try:
            for b in self.action_buttons:
                b.setEnabled(not on)
            self.cancel_button.setEnabled(on and self._mine)
            self.progress_bar.setVisible(on and self._mine)
            if not on:
                self._mine = False
        except RuntimeError:
            pass


def spin(value: float, lo: float, hi: float, step: float, tip: str) -> QDoubleSpinBox:
    """A two-decimal spin box for a panel parameter."""
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def labelled_grid(pairs: tuple[tuple[str, QWidget], ...]) -> QGridLayout:
    """(label, box) pairs laid out two per row."""
    grid = QGridLayout()
    for k, (text, box) in enumerate(pairs):
        grid.addWidget(QLabel(text), k // 2, 2 * (k % 2))
        grid.addWidget(box, k // 2, 2 * (k % 2) + 1)
    return grid
