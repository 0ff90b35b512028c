"""The widget's worker threads (model load, slice encoding, long jobs) and the end of the process.

A ``thread_worker`` still running when the interpreter exits has its Qt signal object deleted under
it; its last ``finished.emit()`` then raises in a Qt thread and the process aborts ("wrapped C/C++
object of type WorkerBaseSignals has been deleted"). This happens to scripts that close the viewer
(or just end) while an image is being encoded: napari's own event loop waits for workers when it
quits, a script never enters it. :func:`start` starts a worker and, the first time, registers an
``atexit`` handler that waits for the thread pool before the interpreter tears Qt down. The wait is
bounded by the work in flight: encodes are one model run (tiles: one tile, the generator is quit),
long jobs stop at their next cancel check (the widget cancels them when the viewer closes).
"""

from __future__ import annotations

import atexit
from typing import Any

from qtpy.QtCore import QThreadPool

_registered = False


def wait_for_workers(msecs: int = -1) -> bool:
    """Wait (``msecs``; -1: as long as needed) for every worker of Qt's global thread pool; True when done."""
    return bool(QThreadPool.globalInstance().waitForDone(msecs))


def start(worker: Any) -> Any:
    """``worker.start()``, with the exit-time wait registered (see the module doc)."""
    global _registered
    if not _registered:
        atexit.register(wait_for_workers)
        _registered = True
    worker.start()
    return worker
