#!/usr/bin/env bash
# Single-node launch with torchrun (c10d rendezvous on localhost).
#
#   launch/torchrun.sh NPROC CONFIG [key=value ...]
#   launch/torchrun.sh 2 configs/train/tiny.yaml parallel.tp=2
#   launch/torchrun.sh 8 configs/train/gpt-1.3b.yaml parallel.tp=2 parallel.pp=2
#
# torchrun exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; the layout
# (parallel.tp * pp * dp_replicate * dp_shard) must equal NPROC (dp_shard=-1 fills it).
# On CPU-only machines the gloo backend is used automatically; set OMP_NUM_THREADS
# to (cores / NPROC) so ranks do not oversubscribe the CPU.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
NPROC=$1; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec torchrun --standalone --nnodes 1 --nproc-per-node "$NPROC" -m megatron_detox train "$@"
