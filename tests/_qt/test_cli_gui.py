"""The README's launch command path: ``napari-sam gui`` opens napari with the sample and the widget."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
def test_gui_opens_sample_and_docks_widget(tmp_path) -> None:
    png = tmp_path / "window.png"
    code = (
        "import sys, napari\n"
        "from napari_sam import cli\n"
        "opened = []\n"
        "orig = napari.Viewer.close\n"
        "def close(self):\n"
        "    opened.append(([l.name for l in self.layers], list(self.window.dock_widgets)))\n"
        "    return orig(self)\n"
        "napari.Viewer.close = close\n"
        f"rc = cli.main(['gui', '--screenshot', {str(png)!r}])\n"
        "print(opened)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    layers, docks = eval(proc.stdout.strip().splitlines()[-1])[0]  # noqa: S307 (our own repr)
    assert any("nuclei" in name for name in layers)
    assert any("Segment Anything" in name for name in docks)
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
@pytest.mark.parametrize("kind", ["text named .png", "truncated PNG"])
def test_gui_on_an_unreadable_image_says_so_and_exits_cleanly(tmp_path, kind) -> None:
    """It used to print the error and then segfault (exit 139), 3 runs of 3 (issue 23)."""
    from pathlib import Path

    bad = tmp_path / "cells.png"
    if kind == "text named .png":
        bad.write_text("hello, not an image")
    else:
        good = Path(__file__).parents[2] / "docs" / "images" / "widget.png"
        bad.write_bytes(good.read_bytes()[:300])
    proc = subprocess.run([sys.executable, "-m", "napari_sam.cli", "gui", str(bad)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith(f"napari-sam: error: cannot open {str(bad)!r} as an image")
    assert "PNG, TIFF" in err[-1] and "Traceback" not in proc.stderr
