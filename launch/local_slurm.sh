#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian/Ubuntu `slurm-wlm` + `munge`), to try
# launch/slurm.sbatch without a cluster; tests/test_slurm.py uses it. Needs root and apt-get.
#
#   sudo launch/local_slurm.sh          # = start: install (first time, ~1-2 min), configure, start; idempotent
#   sudo launch/local_slurm.sh status   # sinfo + squeue
#   sudo launch/local_slurm.sh stop     # cancel every job, stop slurmd, slurmctld and munged
#
# The cluster is one node (this host) in partition `debug` with all its CPUs (LOCAL_SLURM_CPUS to
# use fewer) and, if /dev/nvidia0.. exist, its GPUs as gres `gpu` (LOCAL_SLURM_GPUS=0 to leave them
# out). Config: /etc/slurm/slurm.conf (rewritten, and the daemons restarted, only when it changes);
# logs: /var/log/slurm/. No accounting database, so no `sacct`: `scontrol show job` has the state.
# A slurm.conf that this script did not write (a real cluster node) is left alone: exit 3.
# Then, e.g.:  sbatch --ntasks-per-node=2 launch/slurm.sbatch fit --config tests/configs/slurm_micro.yaml
set -euo pipefail
MODE=${1:-start}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # pid file: TERM, wait, then KILL; only the process named in our pid file
  local f=$1 pid
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop_all() {
  if pid_alive /run/slurmctld.pid; then
    # cancel every job first so that no srun task outlives the cluster
    local jobs; jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
    fi
  fi
  stop_daemon /run/slurmd.pid
  stop_daemon /run/slurmctld.pid
  stop_daemon /run/munge/munged.pid
}

MARK="# written by synthloop launch/local_slurm.sh"
ours() {  # refuse to touch a SLURM that this script did not set up (exit 3)
  # ours, or a one-node "ClusterName=local" like the one ../shared/tools/local-slurm.sh writes
  if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf" \
     && ! grep -qx "ClusterName=local" "$CONF_DIR/slurm.conf" && [[ ${LOCAL_SLURM_FORCE:-0} != 1 ]]; then
    echo "local_slurm.sh: $CONF_DIR/slurm.conf exists and was not written by this script: leaving this" \
         "machine's SLURM alone (LOCAL_SLURM_FORCE=1 to replace it)" >&2
    exit 3
  fi
}

case "$MODE" in
  stop) ours; stop_all; echo "local slurm stopped"; exit 0;;
  status) sinfo; squeue; exit 0;;
  start) ;;
  *) die "usage: $0 [start|stop|status]";;
esac

[[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts the SLURM daemons)"
ours

# -- install ---------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm-wlm is not installed and apt-get is not available"
  echo "installing slurm-wlm and munge (apt-get) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# -- configure -------------------------------------------------------------------------------------
H=$(hostname -s)
NC=${LOCAL_SLURM_CPUS:-$(nproc)}
MEM=$(free -m | awk '/^Mem/{print int($2*0.8)}')
NGPU=0
if [[ ${LOCAL_SLURM_GPUS:-auto} != 0 ]]; then
  NGPU=$(compgen -G "/dev/nvidia[0-9]*" | wc -l || true)
fi
GRES_NODE=""; GRES_TYPES=""
if [[ $NGPU -gt 0 ]]; then
  GRES_TYPES="GresTypes=gpu"
  GRES_NODE="Gres=gpu:$NGPU"
fi
mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd" /run/munge
NEW=$(mktemp)
cat > "$NEW" <<CONF
$MARK: a one-node cluster for trying launch/slurm.sbatch
ClusterName=local
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
# a requeued job waits cred_expire s before it may start again (default 120): short for a local cluster
AuthInfo=cred_expire=5
CredType=cred/munge
SlurmUser=root
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmdSpoolDir=$SPOOL/slurmd
StateSaveLocation=$SPOOL/slurmctld
ReturnToService=2
# requeue: allowed by default (sbatch --requeue); a job's tasks get SIGTERM, then SIGKILL KillWait s later
JobRequeue=1
KillWait=10
MinJobAge=600
$GRES_TYPES
NodeName=$H NodeAddr=127.0.0.1 CPUs=$NC RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
CHANGED=0
if ! cmp -s "$NEW" "$CONF_DIR/slurm.conf"; then
  mv "$NEW" "$CONF_DIR/slurm.conf"; CHANGED=1
else
  rm -f "$NEW"
fi
chmod 644 "$CONF_DIR/slurm.conf"
if [[ $NGPU -gt 0 ]]; then
  echo "Name=gpu File=/dev/nvidia[0-$((NGPU - 1))]" > "$CONF_DIR/gres.conf.new"
  if ! cmp -s "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"; then
    mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"; CHANGED=1
  else
    rm -f "$CONF_DIR/gres.conf.new"
  fi
fi
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey -c -f; else create-munge-key -f; fi
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key

# -- start (restart the SLURM daemons when the config changed) -------------------------------------
if [[ $CHANGED -eq 1 ]]; then
  stop_daemon /run/slurmd.pid
  stop_daemon /run/slurmctld.pid
fi
if ! pid_alive /run/munge/munged.pid && ! munge -n </dev/null >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
fi
for _ in $(seq 20); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.25; done
munge -n </dev/null >/dev/null 2>&1 || die "munged does not answer"
pid_alive /run/slurmctld.pid || slurmctld
pid_alive /run/slurmd.pid || slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -n "$H" -o %T 2>/dev/null | head -n1 || true)
  case "$state" in idle*|mix*|alloc*) break;; esac
  sleep 0.5
done
case "$state" in
  idle*|mix*|alloc*) ;;
  *) scontrol update nodename="$H" state=resume 2>/dev/null || true; sleep 1
     state=$(sinfo -h -n "$H" -o %T 2>/dev/null | head -n1 || true);;
esac
case "$state" in
  idle*|mix*|alloc*) ;;
  *) die "node $H is '${state:-unknown}' (see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log)";;
esac
sinfo
