#!/usr/bin/env bash
# Install everything napari-sam needs on a fresh Debian/Ubuntu machine and run the whole
# test suite headless (under Xvfb). Extra arguments go to pytest.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k widget  # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
install_system_packages
install_python_env testing
exec xvfb-run -a --server-args="-screen 0 1600x1000x24" .venv/bin/python -m pytest "$@"
