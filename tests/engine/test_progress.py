"""The progress contract's default: ``"auto"`` draws a terminal bar only when standard error is a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from napari_sam.engine.progress import AUTO, TerminalProgress, resolve_progress
from napari_sam.errors import SamUserError


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_callables_and_none_pass_through(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    seen: list[tuple[int, int]] = []
    assert resolve_progress(None, "x") is None
    cb = lambda done, total: seen.append((done, total))  # noqa: E731
    assert resolve_progress(cb, "x") is cb


def test_auto_is_a_bar_on_a_terminal_and_nothing_otherwise(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # captured output, CI, a log file
    assert resolve_progress(AUTO, "x") is None
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = resolve_progress(AUTO, "segment_volume")
    assert isinstance(bar, TerminalProgress)
    for done in range(1, 5):
        bar(done, 4)
    out = term.getvalue()
    assert "segment_volume" in out and "4/4" in out
    monkeypatch.setenv("NAPARI_SAM_PROGRESS", "0")  # switched off
    assert resolve_progress(AUTO, "x") is None


def test_a_wrong_string_says_what_is_expected() -> None:
    with pytest.raises(SamUserError, match="callable progress\\(done, total\\), None or 'auto'"):
        resolve_progress("yes", "x")
