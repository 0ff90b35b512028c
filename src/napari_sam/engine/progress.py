"""The one progress/cancel contract of long work (encoding stacks, propagation, automatic masks, downloads).

- ``progress(done, total)`` is called as work finishes (``total`` may be 0 when unknown); None: no reports.
- ``cancel`` is a callable returning True to stop, or a ``threading.Event`` (set: stop; any object with
  ``is_set()``, such as a ``multiprocessing.Event``, is read the same way); None: never.
  Loops check it between units of work: :func:`is_cancelled` to stop and keep what is done,
  :func:`check_cancel` to raise :class:`~napari_sam.errors.Cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari_sam.errors import Cancelled

__all__ = ["Cancel", "Progress", "check_cancel", "is_cancelled"]

Progress = Callable[[int, int], None] | None
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
