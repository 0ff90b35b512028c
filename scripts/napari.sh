#!/usr/bin/env bash
# Install napari-sam (with napari and PyQt6) on a fresh Debian/Ubuntu machine and launch napari
# with the plugin docked and the nuclei sample open, ready to click.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
install_system_packages
install_python_env all
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "No display found: starting napari under Xvfb (set DISPLAY to use your screen)." >&2
  exec xvfb-run -a .venv/bin/napari-sam gui "$@"
fi
exec .venv/bin/napari-sam gui "$@"
