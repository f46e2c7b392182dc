#!/usr/bin/env bash
# Launch any synthloop config with torchrun.
#   single node, 8 GPUs:   launch/torchrun.sh --nproc 8 -- fit --config configs/quickstart.yaml --trainer.devices=8
#   multi-node (run on every node; NODE_RANK differs):
#     NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 launch/torchrun.sh --nproc 8 -- fit --config ... --trainer.num_nodes=2
#   --dry-run prints the command line instead of running it.
set -euo pipefail
NPROC=${NPROC:-1}; DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) NPROC=$2; shift 2;;
    --dry-run) DRY=1; shift;;
    --) shift; break;;
    *) break;;
  esac
done
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}
if [[ "$NNODES" -gt 1 ]]; then
  RDZV=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-synthloop}")
else
  RDZV=(--standalone --nnodes=1)
fi
CMD=(torchrun "${RDZV[@]}" --nproc_per_node="$NPROC" -m train.cli "$@")
if [[ $DRY -eq 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
