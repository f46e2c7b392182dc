"""The launchers' exact command lines (--dry-run), and a real two-node torchrun rendezvous on localhost.

The SLURM template itself is run against a real SLURM in tests/test_slurm.py; here its dry run is
given a simulated allocation (the SLURM_* variables srun/sbatch would set), so these tests need no
SLURM and no root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QS = "configs/quickstart.yaml"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SYNTHLOOP_")) and k not in ("NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR",
                                                                       "MASTER_PORT", "RDZV_ID", "OMP_NUM_THREADS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def _run(*cmd: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", *cmd], cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# -- torchrun ----------------------------------------------------------------------------------------
def test_torchrun_single_node():
    out = _run("launch/torchrun.sh", "--nproc", "2", "--dry-run", "--", "fit", "--config", QS).stdout
    assert out == ("torchrun --standalone --nnodes=1 --nproc_per_node=2 -m train.cli fit --config "
                   "configs/quickstart.yaml --trainer.devices=2 --trainer.num_nodes=1 --trainer.strategy=ddp\n")


def test_torchrun_two_nodes_by_flags_and_by_environment():
    expected = ("torchrun --nnodes=2 --node_rank=1 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 "
                "--rdzv_id=synthloop --nproc_per_node=8 -m train.cli fit --config configs/quickstart.yaml "
                "--trainer.accelerator=gpu --trainer.devices=8 --trainer.num_nodes=2 --trainer.strategy=ddp\n")
    flags = _run("launch/torchrun.sh", "--nnodes", "2", "--node-rank", "1", "--nproc", "8", "--rdzv-endpoint",
                 "host0:29500", "--dry-run", "--", "fit", "--config", QS, "--trainer.accelerator=gpu").stdout
    assert flags == expected
    env = _env(NNODES="2", NODE_RANK="1", NPROC="8", MASTER_ADDR="host0", MASTER_PORT="29500")
    by_env = _run("launch/torchrun.sh", "--dry-run", "--", "fit", "--config", QS, "--trainer.accelerator=gpu",
                  env=env).stdout
    assert by_env == expected


def test_torchrun_user_arguments_win_and_continual_is_left_alone():
    out = _run("launch/torchrun.sh", "--nproc", "4", "--dry-run", "--", "fit", "--config", QS,
               "--trainer.strategy=deepspeed_stage_2", "--trainer.devices", "4").stdout
    assert out.count("--trainer.strategy") == 1 and "--trainer.strategy=deepspeed_stage_2" in out
    assert out.count("--trainer.devices") == 1
    out = _run("launch/torchrun.sh", "--nproc", "3", "--dry-run", "--", "continual", "--config",
               "configs/gift/toy.yaml").stdout
    assert out == ("torchrun --standalone --nnodes=1 --nproc_per_node=3 -m train.cli continual --config "
                   "configs/gift/toy.yaml\n")
    bad = _run("launch/torchrun.sh", "--nprocs", "2", "--", "fit", check=False)
    assert bad.returncode == 2 and "unknown option --nprocs" in bad.stderr


# -- the sbatch template and its helper ---------------------------------------------------------------
def _allocation(nodes: int, tasks: int, gpus: int = 0, **extra: str) -> dict[str, str]:
    """What sbatch sets in the batch script's environment for --nodes/--ntasks-per-node/--gpus-per-node."""
    env = _env(SLURM_JOB_ID="123456", SLURM_JOB_NAME="synthloop", SLURM_NNODES=str(nodes),
               SLURM_NTASKS_PER_NODE=str(tasks), SLURM_NTASKS=str(nodes * tasks), SLURM_SUBMIT_DIR=str(ROOT),
               SYNTHLOOP_MASTER_ADDR="node01")
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    env.update(extra)
    return env


def test_sbatch_template_two_nodes_eight_gpus():
    out = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS,
               env=_allocation(2, 8, 8, SLURM_CPUS_PER_TASK="8")).stdout.splitlines()
    assert out == [
        "[slurm.sbatch] job 123456 restart 0: 2 node(s) x 8 task(s), 8 GPU(s) per node, run dir runs/slurm-123456",
        "export MASTER_ADDR=node01 MASTER_PORT=23456 OMP_NUM_THREADS=8",
        "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=8 --cpus-per-task=8 python -m train.cli fit "
        "--config configs/quickstart.yaml --trainer.num_nodes=2 --trainer.devices=8 --trainer.accelerator=gpu "
        "--trainer.strategy=ddp --trainer.default_root_dir=runs/slurm-123456 "
        "--trainer.logger.init_args.save_dir=runs/slurm-123456 "
        "--trainer.callbacks+=train.core.preemption.PreemptionCheckpoint",
    ]


def test_sbatch_template_refuses_what_lightning_would_mishandle():
    bad = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS, env=_allocation(1, 1, 8), check=False)
    assert bad.returncode == 2 and "one task per GPU" in bad.stderr
    bad = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS,
               env=_allocation(1, 2, SLURM_JOB_NAME="interactive"), check=False)
    assert bad.returncode == 2 and "makes Lightning ignore SLURM" in bad.stderr
    no_per_node = _allocation(2, 8)
    del no_per_node["SLURM_NTASKS_PER_NODE"]
    bad = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS, env=no_per_node, check=False)
    assert bad.returncode == 2 and "without --ntasks-per-node" in bad.stderr
    gres = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS,
                env=_allocation(1, 4, SLURM_JOB_GPUS="0,1,2,3")).stdout
    assert "--trainer.accelerator=gpu" in gres and "4 GPU(s) per node" in gres
    bad = _run("launch/slurm.sbatch", "fit", "--config", QS, env=_env(), check=False)
    assert bad.returncode == 2 and "not inside a SLURM job" in bad.stderr


def test_sbatch_template_resumes_from_newest_intact_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "slurm_micro" / "version_0" / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 10}, run / "slurm_micro" / "version_0" / "checkpoints" / "step000010.ckpt")
    torch.save({"global_step": 14}, run / "hpc_ckpt_1.ckpt")
    (run / "slurm_micro" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    env = _allocation(1, 2, SYNTHLOOP_RUN_DIR=str(run), SLURM_RESTART_COUNT="1", SYNTHLOOP_PYTHON=sys.executable,
                      PYTHONPATH=str(ROOT))
    out = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS, env=env).stdout
    assert f"[slurm.sbatch] resuming from {run}/hpc_ckpt_1.ckpt (global_step 14)" in out
    assert "restart 1:" in out
    assert out.rstrip().endswith(f"--ckpt_path={run}/hpc_ckpt_1.ckpt")
    never = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS,
                 env=dict(env, SYNTHLOOP_RESUME="never")).stdout
    assert "--ckpt_path" not in never
    given = _run("launch/slurm.sbatch", "--dry-run", "fit", "--config", QS, "--ckpt_path=x.ckpt", env=env).stdout
    assert given.count("--ckpt_path") == 1 and "resuming" not in given


def test_submit_helper_prints_sbatch_and_srun_lines():
    out = _run("launch/slurm.sh", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "8", "--time",
               "24:00:00", "--dry-run", "--", "fit", "--config", QS).stdout.splitlines()
    assert out[1] == ("sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8 --time=24:00:00 "
                      "launch/slurm.sbatch fit --config configs/quickstart.yaml")
    assert out[-2] == "export MASTER_ADDR=<first node of the allocation> MASTER_PORT=<20000 + job id % 20000> " \
                      "OMP_NUM_THREADS=8"
    assert out[-1] == (
        "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=8 --cpus-per-task=8 python -m train.cli fit "
        "--config configs/quickstart.yaml --trainer.num_nodes=2 --trainer.devices=8 --trainer.accelerator=gpu "
        "--trainer.strategy=ddp --trainer.default_root_dir=runs/slurm-JOBID "
        "--trainer.logger.init_args.save_dir=runs/slurm-JOBID "
        "--trainer.callbacks+=train.core.preemption.PreemptionCheckpoint")
    cpu = _run("launch/slurm.sh", "--tasks-per-node", "2", "--run-dir", "runs/try", "--dry-run", "--", "fit",
               "--config", QS).stdout.splitlines()
    assert cpu[1] == ("sbatch --nodes=1 --ntasks-per-node=2 --export=ALL,SYNTHLOOP_RUN_DIR=runs/try "
                      "launch/slurm.sbatch fit --config configs/quickstart.yaml")
    assert "--trainer.default_root_dir=runs/try" in cpu[-1] and "--gpus" not in cpu[1]
    bad = _run("launch/slurm.sh", "--gpus-per-node", "8", "--tasks-per-node", "4", "--dry-run", "--", "fit",
               check=False)
    assert bad.returncode == 2 and "must equal" in bad.stderr


# -- a real multi-node rendezvous: two "nodes" on localhost ------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_node_rendezvous_trains(tmp_path):
    port = _free_port()
    env = _env(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = ["--", "fit", "--config", "tests/configs/clip_micro.yaml", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.export_path={tmp_path}/clip.pt"]
    nodes = [subprocess.Popen(["bash", "launch/torchrun.sh", "--nnodes", "2", "--node-rank", str(rank), "--nproc", "1",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}", *args],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in nodes]
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-4000:]
    state = torch.load(tmp_path / "clip_micro" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    assert state["global_step"] == 4
    assert state["OnlineDataModule"]["world_size"] == 2  # one process on each "node", one DDP job
    assert state["OnlineDataModule"]["consumed_per_rank"] == [32, 32]
    assert sum(out.count("zero-shot accuracy at step 4") for out in outs) == 1
