#!/usr/bin/env bash
# Submit launch/slurm.sbatch with one task per GPU (docs: docs/launch.md).
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 --cpus-per-task 8 --time 24:00:00 -- fit --config configs/quickstart.yaml
#   launch/slurm.sh ... --dry-run -- fit ...   # print the exact sbatch line and the srun line the job runs; submit nothing
#
# Options:
#   --nodes N             nodes (default 1)
#   --gpus-per-node G     GPUs per node; also the tasks per node (Lightning: one process per GPU)
#   --tasks-per-node T    tasks per node without GPUs (CPU runs; default 1)
#   --cpus-per-task C     CPU cores per task (DataLoader workers + the training process)
#   --time T  --partition P  --account A  --job-name NAME  --output PATTERN    passed to sbatch
#   --run-dir DIR         run directory (checkpoints, logs, config); default runs/slurm-<job id>.
#                         Submitting again with the same --run-dir resumes from its newest checkpoint.
#   --sbatch ARG          any other sbatch option, verbatim (repeatable), e.g. --sbatch --qos=high
#   --dry-run             print, do not submit
set -euo pipefail
shell_line() {  # the arguments as one copy-pasteable shell line (quoted only where needed)
  local a out=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
  done
  echo "${out% }"
}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NODES=1; GPUS=0; TASKS=""; CPUS=""; RUN_DIR=""; JOB_NAME=""; DRY=0
SB_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES=$2; shift 2;;
    --gpus-per-node) GPUS=$2; shift 2;;
    --tasks-per-node) TASKS=$2; shift 2;;
    --cpus-per-task) CPUS=$2; shift 2;;
    --time|--partition|--account|--output) SB_EXTRA+=("$1=$2"); shift 2;;
    --job-name) JOB_NAME=$2; shift 2;;
    --run-dir) RUN_DIR=$2; shift 2;;
    --sbatch) SB_EXTRA+=("$2"); shift 2;;
    --dry-run) DRY=1; shift;;
    --) shift; break;;
    -h|--help) sed -n '2,19p' "$0"; exit 0;;
    -*) echo "slurm.sh: unknown option $1 (synthloop arguments go after --)" >&2; exit 2;;
    *) break;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: launch/slurm.sh [options] -- fit --config CONFIG [--key=value ...]" >&2; exit 2; }
for v in NODES GPUS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "slurm.sh: ${v,,} must be a number, got '${!v}'" >&2; exit 2; }
done
if [[ $GPUS -gt 0 ]]; then
  [[ -z $TASKS || $TASKS == "$GPUS" ]] || { echo "slurm.sh: --tasks-per-node must equal --gpus-per-node" >&2; exit 2; }
  TASKS=$GPUS
fi
TASKS=${TASKS:-1}

SB=(sbatch --nodes="$NODES" --ntasks-per-node="$TASKS")
[[ $GPUS -gt 0 ]] && SB+=(--gpus-per-node="$GPUS")
[[ -n $CPUS ]] && SB+=(--cpus-per-task="$CPUS")
[[ -n $JOB_NAME ]] && SB+=(--job-name="$JOB_NAME")
SB+=("${SB_EXTRA[@]}")
if [[ -n $RUN_DIR ]]; then
  [[ $RUN_DIR != *,* ]] || { echo "slurm.sh: --run-dir must not contain a comma (sbatch --export)" >&2; exit 2; }
  SB+=(--export="ALL,SYNTHLOOP_RUN_DIR=$RUN_DIR")
fi
SB+=(launch/slurm.sbatch "$@")

cd "$ROOT"
if [[ $DRY -eq 0 ]]; then
  exec "${SB[@]}"
fi
echo "# submit (from $ROOT):"
shell_line "${SB[@]}"
echo "# then launch/slurm.sbatch runs, at the first start and after every requeue (a restart adds"
echo "# --ckpt_path=<newest checkpoint in the run dir>; JOBID = the job id SLURM assigns):"
# the template's own dry run, with the allocation this submission asks for
SIM=(env)
for v in $(compgen -e | grep '^SLURM_' || true); do SIM+=(-u "$v"); done
SIM+=(SLURM_NNODES="$NODES" SLURM_NTASKS_PER_NODE="$TASKS" SLURM_NTASKS=$((NODES * TASKS))
      SLURM_JOB_NAME="${JOB_NAME:-synthloop}" SLURM_SUBMIT_DIR="$ROOT")
[[ $GPUS -gt 0 ]] && SIM+=(SLURM_GPUS_PER_NODE="$GPUS")
[[ -n $CPUS ]] && SIM+=(SLURM_CPUS_PER_TASK="$CPUS")
[[ -n $RUN_DIR ]] && SIM+=(SYNTHLOOP_RUN_DIR="$RUN_DIR")
"${SIM[@]}" bash launch/slurm.sbatch --dry-run "$@"
