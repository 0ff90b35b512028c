#!/usr/bin/env bash
# The GPU training of the nano candidates (one H100, session 3): four trainers side by side, each
# with 3 processes drawing augmented windows. The schedule (--time-budget, seconds of step time)
# spans several calls: each call resumes from RUNS/*/checkpoint.pt and stops after STOP seconds.
#   usage: bash scripts/train_gpu.sh DATA RUNS STOP
set -u
DATA=$1 RUNS=$2 STOP=$3
python -c "from napari_sam.train import data; data.load_dsb2018('$DATA', data.load_split()['train'], img_size=512)"
common=(--data "$DATA" --device cuda --threads 1 --workers 3 --batch 32 --objects 4 --focal-weight 1
        --time-budget 740 --stop-after "$STOP" --checkpoint-every 60 --log-every 50 --max-corrections 3
        --late-from 0.7 --no-mask-input-prob 0.4 --seed 0)
late=(--late-window 384 --late-decoder-crops 32,48)
python -m napari_sam.train fit --arch nano --out "$RUNS/a_nano" --lr 2e-3 --warmup 200 "${common[@]}" "${late[@]}" &
python -m napari_sam.train fit --arch nano --init nano_nuclei --out "$RUNS/b_nano_ft" --lr 5e-4 --warmup 50 \
    "${common[@]}" "${late[@]}" &
python -m napari_sam.train fit --arch nano_l --out "$RUNS/c_nano_l" --lr 2e-3 --warmup 200 "${common[@]}" "${late[@]}" &
python -m napari_sam.train fit --arch nano_l --out "$RUNS/d_nano_l_full" --lr 2e-3 --warmup 200 --decoder-crops 32 \
    "${common[@]}" --late-window 512 --late-decoder-crops 64 &
wait
