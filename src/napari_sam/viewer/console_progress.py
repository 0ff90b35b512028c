"""Progress of ``SegmentAnything``'s long calls made from napari's console (or a script with a viewer open).

A console call (``sam.segment_volume()``, ``sam.segment_everything()``, ``sam.precompute_embeddings()``,
the tile encodings of ``sam.segment()``) runs on the GUI thread: napari cannot repaint until it returns,
so a bar drawn by napari would never be seen, and the window looks frozen. With ``progress="auto"``
(the default) and a napari window open, :func:`console_progress` gives the engine a
:class:`NapariProgress` instead of the terminal bar (``napari_sam.engine.progress.resolve_progress``):
it reports to a ``napari.utils.progress``, which napari's activity dock shows. The dock's bar processes
Qt's events on each update (napari's own design for progress on the GUI thread), so the window
repaints while the call runs; updates are throttled to ``PUMP_HZ`` a second (and the last one).
No Qt import here: ``viewer/`` stays Qt-free, napari does the painting.

The window stays live meanwhile: the view can be panned, zoomed and browsed. SAM work started
meanwhile (the dock widget's buttons, another console call) is refused at once with a message,
``ModelSlot.exclusive``, so it never shares the model with this call; a layer removed meanwhile is
caught by the ``LabelWriter``'s guard (nothing written, a message says why). To stop a console call
pass ``cancel=`` (the project's contract: a callable or a ``threading.Event``); closing the window
stops it too (:class:`StopWhenClosed`), and nothing is written.
Elsewhere (no window: a script, ``ViewerModel``; a call from a worker thread) ``"auto"`` is the
terminal bar as for the engine's own calls; a callable or None is used as given.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from napari.utils import progress as napari_progress

from napari_sam.engine.progress import Cancel, Progress, is_cancelled, resolve_progress

__all__ = ["PUMP_HZ", "NapariProgress", "StopWhenClosed", "console_progress", "has_window"]

PUMP_HZ = 10.0
"""At most this many bar updates a second during a console call (each is a pass of Qt's event loop)."""


def window_open(viewer: Any) -> bool:
    """Whether ``viewer`` has a Qt window (False for a ``ViewerModel``, or once the window is closed)."""
    return getattr(getattr(viewer, "window", None), "_qt_window", None) is not None


def has_window(viewer: Any) -> bool:
    """Whether ``viewer`` shows a Qt window in this process and the caller is on the GUI thread."""
    return window_open(viewer) and threading.current_thread() is threading.main_thread()


class StopWhenClosed:
    """A ``cancel`` of the project's contract: stop when ``cancel`` says so, or when the viewer's window,
    open at the start, has been closed (``window_closed``: the call's result has nowhere to go)."""

    def __init__(self, viewer: Any, cancel: Cancel) -> None:
        self.viewer, self.cancel = viewer, cancel
        self._watch = window_open(viewer)

    @property
    def window_closed(self) -> bool:
        return self._watch and not window_open(self.viewer)

    def __call__(self) -> bool:
        return self.window_closed or is_cancelled(self.cancel)


class NapariProgress:
    """A ``progress(done, total)`` reporting to a ``napari.utils.progress`` bar (napari's activity dock),
    created at the first report and updated at most ``hz`` (default ``PUMP_HZ``) times a second, and
    at the last report (done == total). Each update lets the window repaint (the dock's bar does)."""

    def __init__(self, description: str, hz: float | None = None) -> None:
        self.description = description
        self.bar: Any = None
        self._interval = 1.0 / (PUMP_HZ if hz is None else hz)
        self._last = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = bool(total) and done >= total
        if self.bar is not None and not final and now - self._last < self._interval:
            return
        self._last = now
        if self.bar is None:
            self.bar = napari_progress(total=total or None, desc=self.description)
        elif total and self.bar.total != total:
            self.bar.total = total
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Remove the bar from the activity dock (called when the call ends, done or not)."""
        if self.bar is not None:
            self.bar.close()


@contextmanager
def console_progress(viewer: Any, progress: Progress | str, description: str) -> Iterator[Progress]:
    """The ``progress`` to give a long job started on this thread, closed (its bar removed) on exit.

    ``"auto"`` with a napari window (:func:`has_window`): a :class:`NapariProgress`; otherwise
    ``resolve_progress`` (a terminal bar when standard error is one). ``NAPARI_SAM_PROGRESS=0``: none."""
    report: Any = resolve_progress(progress, f"SAM: {description}")  # also checks the argument
    if isinstance(progress, str) and os.environ.get("NAPARI_SAM_PROGRESS") != "0" and has_window(viewer):
        report = NapariProgress(f"SAM: {description}")
    try:
        yield report
    finally:
        if report is not progress and report is not None:  # only what was made here
            report.close()
