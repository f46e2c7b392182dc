#!/usr/bin/env bash
# Launch any synthloop command with torchrun (docs: docs/launch.md; on SLURM use launch/slurm.sbatch).
#
#   one node, 8 GPUs:
#     launch/torchrun.sh --nproc 8 -- fit --config configs/quickstart.yaml --trainer.accelerator=gpu
#   2 nodes x 8 GPUs: the same line on both nodes; host0:29500 = an address of the first node that the
#   other node can reach (torchrun's c10d rendezvous; node ranks are assigned by the rendezvous):
#     launch/torchrun.sh --nnodes 2 --nproc 8 --rdzv-endpoint host0:29500 -- fit --config configs/quickstart.yaml --trainer.accelerator=gpu
#
# Options (environment equivalents in brackets):
#   --nproc N              processes on this node, one per GPU [NPROC, default 1]
#   --nnodes N             nodes taking part [NNODES, default 1]
#   --node-rank R          this node's rank; only informative with c10d (the rendezvous assigns ranks) [NODE_RANK]
#   --rdzv-endpoint H:P    rendezvous host:port, on the first node [MASTER_ADDR:MASTER_PORT, default 127.0.0.1:29500]
#   --rdzv-id ID           rendezvous id shared by the nodes of one job [RDZV_ID, default synthloop]
#   --dry-run              print the torchrun command line instead of running it
# For fit/validate/test/predict it adds --trainer.devices=N, --trainer.num_nodes=N and (more than one
# process) --trainer.strategy=ddp, unless the command line gives them already.
set -euo pipefail
shell_line() {  # the arguments as one copy-pasteable shell line (quoted only where needed)
  local a out=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
  done
  echo "${out% }"
}
NPROC=${NPROC:-1}; NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; RDZV_ID=${RDZV_ID:-synthloop}
ENDPOINT="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}"; DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc|--nproc-per-node) NPROC=$2; shift 2;;
    --nnodes) NNODES=$2; shift 2;;
    --node-rank) NODE_RANK=$2; shift 2;;
    --rdzv-endpoint) ENDPOINT=$2; shift 2;;
    --rdzv-id) RDZV_ID=$2; shift 2;;
    --dry-run) DRY=1; shift;;
    --) shift; break;;
    -h|--help) sed -n '2,20p' "$0"; exit 0;;
    -*) echo "torchrun.sh: unknown option $1 (synthloop arguments go after --)" >&2; exit 2;;
    *) break;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: launch/torchrun.sh [options] -- fit --config CONFIG [--key=value ...]" >&2; exit 2; }
for v in NPROC NNODES NODE_RANK; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "torchrun.sh: $v must be a number, got '${!v}'" >&2; exit 2; }
done
[[ $ENDPOINT == *:* ]] || ENDPOINT="$ENDPOINT:29500"

USER_ARGS=("$@")
has_arg() { local a; for a in "${USER_ARGS[@]}"; do [[ $a == "$1" || $a == "$1="* ]] && return 0; done; return 1; }
ADDED=()
add() { has_arg "${1%%=*}" || ADDED+=("$1"); }
case "${USER_ARGS[0]}" in
  fit|validate|test|predict)
    add "--trainer.devices=$NPROC"
    add "--trainer.num_nodes=$NNODES"
    [[ $((NPROC * NNODES)) -gt 1 ]] && add "--trainer.strategy=ddp"
    ;;
esac

if [[ $NNODES -gt 1 ]]; then
  RDZV=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d --rdzv_endpoint="$ENDPOINT" --rdzv_id="$RDZV_ID")
else
  RDZV=(--standalone --nnodes=1)
fi
CMD=(torchrun "${RDZV[@]}" --nproc_per_node="$NPROC" -m train.cli "${USER_ARGS[@]}" "${ADDED[@]}")
if [[ $DRY -eq 1 ]]; then
  shell_line "${CMD[@]}"; exit 0
fi
exec "${CMD[@]}"
