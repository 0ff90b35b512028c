#!/usr/bin/env bash
# Every GPU figure in one run (bench/bench_gpu.py: first encode, encoder batch 1/8/16 with TFLOP/s,
# clicks, segment everything), ours side by side with Meta's segment-anything; ~65 s on an H200 (2026-12-04).
#   bash bench/gpu.sh                      # on a machine with CUDA PyTorch
#   bash bench/gpu.sh --sections click     # one section
#   python3 bench/gpu_smoke.py              # CUDA-only branches checked against the CPU (ok/FAIL lines)
# Needs segment-anything (the reference) importable: installed, or as a wheel in $NAPARI_SAM_GPU_FILES
# (default .gpu/, for a machine without a network), which may also hold the dsb2018 PNG that the
# nano_nuclei rows use (default: ../shared/data/dsb2018/images/07fb37aa...png).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${NAPARI_SAM_GPU_FILES:-.gpu}
if ! python3 -c "import segment_anything" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/napari-sam-site "$FILES"/*.whl
  export PYTHONPATH=/tmp/napari-sam-site${PYTHONPATH:+:$PYTHONPATH}
fi
image=()
png=$(ls "$FILES"/*.png 2>/dev/null | head -1 || true)
[ -n "$png" ] && image=(--image "$png")
export PYTHONUNBUFFERED=1
exec python3 bench/bench_gpu.py "${image[@]}" "$@"
