"""The one progress/cancel contract of long work (encoding stacks, propagation, automatic masks, downloads).

- ``progress(done, total)`` is called as work finishes (``total`` may be 0 when unknown); None: no reports.
  The long public calls (``segment_volume``, ``AutomaticMaskGenerator.generate*``,
  ``EmbeddingStore.precompute``) default to ``progress="auto"``: a bar on the terminal when standard
  error is one (a script, an interactive session), nothing otherwise (captured output, CI, napari's
  widget, which passes its own); :func:`resolve_progress` turns the argument into a callable or None.
- ``cancel`` is a callable returning True to stop, or a ``threading.Event`` (set: stop; any object with
  ``is_set()``, such as a ``multiprocessing.Event``, is read the same way); None: never.
  Loops check it between units of work: :func:`is_cancelled` to stop and keep what is done,
  :func:`check_cancel` to raise :class:`~napari_sam.errors.Cancelled`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from napari_sam.errors import Cancelled, SamUserError

__all__ = ["AUTO", "Cancel", "Progress", "TerminalProgress", "check_cancel", "is_cancelled", "resolve_progress"]

Progress = Callable[[int, int], None] | None
#: the default of the long public calls: a terminal bar when standard error is a terminal
AUTO = "auto"
Cancel = Callable[[], bool] | threading.Event | None


def is_cancelled(cancel: Cancel) -> bool:
    """True when ``cancel`` (a callable or a ``threading.Event``) says stop."""
    if cancel is None:
        return False
    return bool(cancel.is_set()) if hasattr(cancel, "is_set") else bool(cancel())


def check_cancel(cancel: Cancel) -> None:
    """Raise :class:`~napari_sam.errors.Cancelled` when ``cancel`` says stop."""
    if is_cancelled(cancel):
        raise Cancelled("cancelled")


class TerminalProgress:
    """A ``progress(done, total)`` that draws a tqdm bar on standard error; it closes when done reaches total."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm  # lazy: only a terminal run needs it (napari brings it)

            self._bar = tqdm(total=total or None, desc=self.description, file=sys.stderr, leave=False,
                             dynamic_ncols=True)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()
        if total and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def resolve_progress(progress: Progress | str, description: str) -> Progress:
    """``progress`` as a callable or None: ``"auto"`` is a :class:`TerminalProgress` when standard error
    is a terminal (and ``NAPARI_SAM_PROGRESS`` is not ``0``), else None; a callable or None is returned as is."""
    if not isinstance(progress, str):
        return progress
    if progress != AUTO:
        raise SamUserError(f"progress must be a callable progress(done, total), None or 'auto', not {progress!r}")
    stream = sys.stderr
    if os.environ.get("NAPARI_SAM_PROGRESS") == "0" or stream is None or not stream.isatty():
        return None
    return TerminalProgress(description)
