"""Long ``SegmentAnything`` calls made as from napari's console (on the GUI thread, ``progress`` left at
"auto") show a bar in napari's activity dock and keep the window repainting (issue 23); elsewhere the
terminal bar or the caller's own ``progress`` is used."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _synthetic import ellipsoid_volume
from napari.components import ViewerModel
from napari.utils import progress as napari_progress
from qtpy.QtCore import QTimer

from napari_sam.engine.progress import TerminalProgress
from napari_sam.errors import SamUserError
from napari_sam.viewer import console_progress as cp
from napari_sam.viewer.segment_anything import SegmentAnything

NO_STOP = {"iou_threshold": float("-inf"), "overlap_threshold": 0.0, "stability_threshold": 0.0,
           "max_distance": None, "max_extent": None, "min_area": 4}


class Ticks:
    """Counts a zero-interval Qt timer's ticks: non-zero only if the event loop ran (the window could paint)."""

    def __init__(self) -> None:
        self.n = 0
        self.timer = QTimer()
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.n += 1

    def __enter__(self) -> Ticks:
        self.n = 0
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()


class Bars:
    """Every ``napari.utils.progress`` made while recording: its description, the values it showed,
    whether napari's activity dock took it (``gui``) and the dock's bars at each value."""

    def __init__(self, viewer, ticks: Ticks | None = None) -> None:
        self.ticks = ticks
        self.ticks_seen: list[int] = []  # ticks.n at each value reported
        self.seen: list = []
        self.values: dict[int, list[int]] = {}
        self.dock_bars: list[int] = []
        self.dialog = viewer.window._qt_window._activity_dialog
        napari_progress._all_instances.events.changed.connect(self._changed)

    def _changed(self, event) -> None:
        from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

        def recorder(values: list[int]):
            def on_value(e) -> None:
                values.append(int(e.value))
                self.ticks_seen.append(self.ticks.n if self.ticks is not None else 0)
                self.dock_bars.append(len(self.dialog.findChildren(QtLabeledProgressBar)))

            return on_value

        for bar in event.added:
            self.seen.append(bar)
            self.values[id(bar)] = []
            bar.events.value.connect(recorder(self.values[id(bar)]))

    def stop(self) -> None:
        napari_progress._all_instances.events.changed.disconnect(self._changed)


@pytest.fixture
def stack_sam(make_napari_viewer, tiny_sam):
    """(viewer, sam, img, seeds_xy): a SegmentAnything on an (8, 48, 48) stack, one seed point."""
    viewer = make_napari_viewer()
    img, _, info = ellipsoid_volume((8, 48, 48), n_objects=2, seed=1)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.set_image_layer(viewer.add_image(img, name="stack"))
    c = info[0]["center"]
    seeds = {1: {int(round(c[0])): {"points": [[c[2], c[1]]]}}}  # SAM (x, y)
    return viewer, sam, img, seeds


def test_console_segment_volume_shows_a_napari_bar_and_repaints(stack_sam, monkeypatch):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)  # every report (the tiny model is faster than 10 Hz)
    with Ticks() as ticks:
        bars = Bars(viewer, ticks)
        ids = sam.segment_volume(seeds_xy=seeds, **NO_STOP)  # progress left at "auto", as in the console
    bars.stop()
    assert ids == [1] and sam.labels_layer.data.any()
    (bar,) = bars.seen
    assert bar.desc == "SAM: 3D segmentation" and bar.gui  # the activity dock took it
    values = bars.values[id(bar)]
    assert values == sorted(values) and values[-1] == bar.total
    assert len(values) >= 3 and min(bars.dock_bars) >= 1  # updated while shown in the dock
    assert bar not in napari_progress._all_instances  # removed when the call ended
    assert bars.ticks_seen[-1] > bars.ticks_seen[0] >= 0  # Qt's event loop ran while the job ran


def test_console_cancel_keeps_whole_slices(stack_sam, monkeypatch):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)  # the bar sees every report
    labels = sam.labels_layer
    stop = threading.Event()
    bars = Bars(viewer)

    def cancel_at_two(event):  # the bar's own reports drive the cancel (contract: an Event)
        for bar in event.added:
            bar.events.value.connect(lambda e: stop.set() if e.value >= 2 else None)

    napari_progress._all_instances.events.changed.connect(cancel_at_two)
    try:
        part_ids = sam.segment_volume(seeds_xy=seeds, cancel=stop, **NO_STOP)
    finally:
        napari_progress._all_instances.events.changed.disconnect(cancel_at_two)
        bars.stop()
    part = sam.last_volume
    assert part.cancelled and part_ids == [1]
    assert not napari_progress._all_instances  # the bar went with the cancelled call
    written = labels.data.copy()
    labels.undo()
    assert not labels.data.any()
    assert sam.segment_volume(seeds_xy=seeds, progress=None, **NO_STOP) == [1]
    full = labels.data.copy()
    done = [z for z in range(len(img)) if written[z].any()]
    assert 0 < len(done) < len([z for z in range(len(img)) if full[z].any()])
    for z in range(len(img)):  # each slice is the full run's slice, or untouched
        np.testing.assert_array_equal(written[z], full[z] if z in part.slices else 0)


def test_console_everything_and_precompute_show_bars(stack_sam):
    viewer, sam, img, seeds = stack_sam
    bars = Bars(viewer)
    with Ticks() as ticks:
        assert sam.precompute_embeddings() == len(img)
        sam.segment_everything(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, stack=True)
    bars.stop()
    assert [b.desc for b in bars.seen] == ["SAM: embeddings", "SAM: segment everything"]
    assert all(b.gui and bars.values[id(b)] and bars.values[id(b)][-1] == b.total for b in bars.seen)
    assert not napari_progress._all_instances and ticks.n > 0


def test_console_click_on_a_tiled_image_shows_the_tile_encodings(make_napari_viewer, tiny_sam):
    viewer = make_napari_viewer()
    img = (np.random.default_rng(0).random((600, 700)) * 255).astype(np.uint8)
    sam = SegmentAnything(viewer)
    sam.set_model(tiny_sam, device="cpu")
    sam.tiled = True
    sam.set_image_layer(viewer.add_image(img, name="big"))
    bars = Bars(viewer)
    mask = sam.segment(points=[[300, 350]])
    bars.stop()
    n = sam.predictor.encodings(img.shape)
    assert mask.shape == img.shape and n > 2
    (bar,) = bars.seen
    assert bar.desc == f"SAM: {n} tile encodings" and bars.values[id(bar)][-1] == n == bar.total


def test_a_callable_or_none_is_used_as_given(stack_sam):
    viewer, sam, img, seeds = stack_sam
    bars = Bars(viewer)
    seen = []
    sam.segment_volume(seeds_xy=seeds, progress=lambda d, t: seen.append((d, t)), **NO_STOP)
    sam.labels_layer.undo()
    sam.segment_volume(seeds_xy=seeds, progress=None, **NO_STOP)
    bars.stop()
    assert seen and seen[-1][0] == seen[-1][1] and not bars.seen
    with pytest.raises(SamUserError, match="progress must be a callable"):
        sam.precompute_embeddings(progress="bar")


def test_no_window_or_another_thread_gets_the_terminal_bar(monkeypatch, stack_sam):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    with cp.console_progress(ViewerModel(), "auto", "x") as report:  # no window: a script's terminal
        assert isinstance(report, TerminalProgress)
    got = []
    thread = threading.Thread(target=lambda: got.append(cp.has_window(viewer)))
    thread.start()
    thread.join()
    assert got == [False] and cp.has_window(viewer)  # only the GUI thread may draw in napari
    monkeypatch.setenv("NAPARI_SAM_PROGRESS", "0")
    with cp.console_progress(viewer, "auto", "x") as report:
        assert report is None


def test_bar_updates_are_throttled(monkeypatch):
    now, shown = [0.0], []
    monkeypatch.setattr(cp.time, "monotonic", lambda: now[0])
    report = cp.NapariProgress("SAM: test", hz=10)
    try:
        for k in range(1, 101):  # 100 reports over 1 s
            now[0] = k * 0.01
            report(k, 100)
            if k == 1:
                report.bar.events.value.connect(lambda e: shown.append(e.value))
        assert report.bar.n == 100 and report.bar.total == 100  # the last report always shows
    finally:
        report.close()
    assert 9 <= len(shown) <= 11 and shown[-1] == 100  # about 10 a second (each repaints), not 100


def _during(at: int, action):
    """Run ``action()`` once, on the GUI thread, when a napari bar first reports ``at`` or more
    (the user acting while the window is live); returns the list of what it raised."""
    raised: list[BaseException] = []

    def changed(event):
        for bar in event.added:
            def on_value(e):
                if e.value >= at and not done:
                    done.append(1)
                    try:
                        action()
                    except Exception as exc:  # noqa: BLE001 - recorded for the test
                        raised.append(exc)

            bar.events.value.connect(on_value)

    done: list[int] = []
    napari_progress._all_instances.events.changed.connect(changed)
    return raised, lambda: napari_progress._all_instances.events.changed.disconnect(changed)


def test_a_second_console_call_during_one_is_refused(stack_sam, monkeypatch):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)
    raised, stop = _during(2, lambda: sam.segment_everything(points_per_side=4))
    try:
        assert sam.segment_volume(seeds_xy=seeds, **NO_STOP) == [1]
    finally:
        stop()
    (exc,) = raised
    assert isinstance(exc, SamUserError) and "SAM is busy with '3D segmentation'" in str(exc)
    assert "nothing was written" in str(exc)
    assert np.unique(sam.labels_layer.data).tolist() == [0, 1]  # the 3D object only, whole
    assert not napari_progress._all_instances


def test_image_removed_during_a_console_call_writes_nothing(stack_sam, monkeypatch):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)
    labels = sam.labels_layer
    raised, stop = _during(2, lambda: viewer.layers.remove("stack"))
    try:
        with pytest.raises(SamUserError, match="image layer 'stack' was removed") as err:
            sam.segment_volume(seeds_xy=seeds, **NO_STOP)
    finally:
        stop()
    assert not raised and "nothing was written" in str(err.value)
    assert not labels.data.any() and not labels._undo_history
    assert not napari_progress._all_instances


def test_viewer_closed_during_a_console_call(stack_sam, monkeypatch):
    viewer, sam, img, seeds = stack_sam
    monkeypatch.setattr(cp, "PUMP_HZ", 1e9)
    labels = sam.labels_layer
    before = labels.data.copy()
    raised, stop = _during(2, viewer.close)
    try:
        with pytest.warns(RuntimeWarning, match="window was closed during '3D segmentation'.*nothing was written"):
            ids = sam.segment_volume(seeds_xy=seeds, **NO_STOP)
    finally:
        stop()
    assert not raised and ids == []
    np.testing.assert_array_equal(labels.data, before)
    assert not napari_progress._all_instances
