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
