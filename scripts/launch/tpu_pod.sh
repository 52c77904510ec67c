#!/bin/bash
# NFNet-F0 on a Cloud TPU v4-512 pod slice (256 chips, 32 hosts): the same command on every worker.
# jax.distributed finds the coordinator from the TPU metadata (TPU_WORKER_HOSTNAMES), so no
# --coordinator_address is given; workdir and data live in a bucket every host can read.
#   bash scripts/launch/tpu_pod.sh TPU_NAME ZONE gs://BUCKET
set -euo pipefail
TPU=$1 ZONE=$2 BUCKET=$3
CMD="cd ~/nfnet-jax && python scripts/train.py --config=configs/nfnet.py:F0 \
  --workdir=$BUCKET/runs/nfnet_f0 --config.data_dir=$BUCKET/tensorflow_datasets"
# Check the config for this topology first (runs on one host, nothing is trained):
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=0 \
  --command="$CMD --dry_run --dry_run_devices=256 --dry_run_processes=32"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$CMD"
