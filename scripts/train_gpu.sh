#!/usr/bin/env bash
# How the shipped nano_nuclei weights were trained (one H100, 2026-11-22): candidates side by side on
# one GPU, each with 3 processes drawing augmented windows. A schedule (--time-budget, seconds of
# step time) may span several calls: a call resumes from RUNS/*/checkpoint.pt and stops after STOP s.
#   bash scripts/train_gpu.sh DATA RUNS STOP 1   # stage 1: four candidates from scratch / nano_nuclei v1
#   bash scripts/train_gpu.sh DATA RUNS STOP 2   # stage 2: warm restarts from stage 1's models
# Shipped: RUNS/e_nano/model.pt (stage 1 "a_nano" run in two calls, STOP 420 then 360; stage 2 once, STOP 420).
set -u
DATA=$1 RUNS=$2 STOP=$3 STAGE=${4:-1}
python -c "from napari_sam.train import data; data.load_dsb2018('$DATA', data.load_split()['train'], img_size=512)"
common=(--data "$DATA" --device cuda --threads 1 --workers 3 --batch 32 --focal-weight 1 --stop-after "$STOP"
        --checkpoint-every 60 --max-corrections 3 --no-mask-input-prob 0.4 --late-window 384 --late-decoder-crops 32,48)
if [ "$STAGE" = 1 ]; then
    s1=(--objects 4 --time-budget 740 --log-every 50 --late-from 0.7 --seed 0)
    python -m napari_sam.train fit --arch nano --out "$RUNS/a_nano" --lr 2e-3 --warmup 200 "${common[@]}" "${s1[@]}" &
    python -m napari_sam.train fit --arch nano --init nano_nuclei --out "$RUNS/b_nano_ft" --lr 5e-4 --warmup 50 \
        "${common[@]}" "${s1[@]}" &
    python -m napari_sam.train fit --arch nano_l --out "$RUNS/c_nano_l" --lr 2e-3 --warmup 200 "${common[@]}" "${s1[@]}" &
    python -m napari_sam.train fit --arch nano_l --out "$RUNS/d_nano_l_full" --lr 2e-3 --warmup 200 --decoder-crops 32 \
        "${common[@]}" "${s1[@]}" --late-window 512 --late-decoder-crops 64 &
else
    s2=(--time-budget 400 --log-every 100 --late-from 0.5 --seed 1 --lr 6e-4 --warmup 20)
    python -m napari_sam.train fit --arch nano --init "$RUNS/a_nano/model.pt" --out "$RUNS/e_nano" --objects 4 \
        "${common[@]}" "${s2[@]}" &
    python -m napari_sam.train fit --arch nano_l --init "$RUNS/c_nano_l/model.pt" --out "$RUNS/f_nano_l" --objects 4 \
        "${common[@]}" "${s2[@]}" &
    python -m napari_sam.train fit --arch nano --init "$RUNS/b_nano_ft/model.pt" --out "$RUNS/g_nano" --objects 8 \
        "${common[@]}" "${s2[@]}" &
fi
wait
