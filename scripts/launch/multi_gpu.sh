#!/bin/bash
# NFNet-F0 on one machine with 8 GPUs: one process drives every local GPU (no distributed set-up).
# Batch 4096 = 8 GPUs x 16 micro-batches x 32 images.   bash scripts/launch/multi_gpu.sh [WORKDIR]
set -euo pipefail
WORKDIR=${1:-runs/nfnet_f0}
ARGS=(--config=configs/nfnet.py:F0 --workdir="$WORKDIR" --config.data_dir="${TFDS_DATA_DIR:?set TFDS_DATA_DIR}"
      --config.grad_accum_steps=16)
python scripts/train.py "${ARGS[@]}" --dry_run --dry_run_devices=8 --dry_run_processes=1
python scripts/train.py "${ARGS[@]}"
