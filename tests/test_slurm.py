"""Pre-emption and the SLURM launcher.

* In-process (any machine): SIGUSR1 -> the PreemptionCheckpoint callback checkpoints at the step
  boundary and stops; resuming from that checkpoint ends with exactly the weights of an
  uninterrupted run. The newest-intact-checkpoint finder skips a truncated file.
* Against a real SLURM (root + apt-get; CI): launch/local_slurm.sh sets up a one-node cluster,
  launch/slurm.sbatch runs tests/configs/slurm_micro.yaml as 2 tasks (DDP over gloo), once
  uninterrupted and once pre-empted half-way with `scancel --signal=USR1`: the job checkpoints,
  requeues itself, restarts (SLURM_RESTART_COUNT 1), resumes from its checkpoint; then a hard
  `scontrol requeue`, then `scancel --signal=TERM` (checkpoint, exit 143, requeue); it finishes with
  bit-identical weights and data-stream positions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from train.core.preemption import EXIT_NOT_REQUEUED, PreemptionCheckpoint, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "tests/configs/slurm_micro.yaml"
MAX_STEPS = 80  # slurm_micro.yaml


# -- in-process: the callback ------------------------------------------------------------------------
class SignalAt(pl.Callback):
    """Sends ``SIGUSR1`` to this process at the end of training step ``step`` (before the callbacks after it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def _fit(root: Path, max_steps: int, callbacks: list, ckpt_path: str | None = None) -> pl.Trainer:
    from datagen.world import WorldCaptions
    from train.clip.pretrain import CLIPPretrain
    from train.core.datamodule import OnlineDataModule

    pl.seed_everything(0)
    model = CLIPPretrain(model_name="synthloop-micro-vit32", warmup_steps=2, eval_families=["shape"],
                         eval_per_class=2, export_path=str(root / "clip.pt"))
    data = OnlineDataModule(generator=WorldCaptions(image_size=32, n_objects=(1, 3)), batch_size=8, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(root), callbacks=callbacks)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def no_slurm(monkeypatch):
    # never requeue the job that runs the tests (CI inside SLURM), never let Lightning detect SLURM
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def test_signal_checkpoints_at_step_boundary_and_resume_is_exact(tmp_path, no_slurm):
    ref = _fit(tmp_path / "ref", 8, [])
    ref_state = {k: v.clone() for k, v in ref.lightning_module.state_dict().items()}

    run = tmp_path / "run"
    callback = PreemptionCheckpoint()
    with pytest.raises(SystemExit) as exc:
        _fit(run, 8, [SignalAt(3), callback])
    assert exc.value.code == EXIT_NOT_REQUEUED  # not under SLURM: stopped with a checkpoint, not requeued
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handler removed again
    ckpt = run / "hpc_ckpt_1.ckpt"
    assert ckpt.is_file() and not list(run.glob(".*partial"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert state["OnlineDataModule"]["consumed_per_rank"] == [3 * 8]  # the batch of step 3 counted, no more
    assert latest_checkpoint(run) == (ckpt, 3)

    resumed = _fit(run, 8, [PreemptionCheckpoint()], ckpt_path=str(ckpt))
    assert resumed.global_step == 8
    for key, value in resumed.lightning_module.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def test_signal_during_last_step_finishes_normally(tmp_path, no_slurm):
    trainer = _fit(tmp_path, 3, [SignalAt(3), PreemptionCheckpoint()])
    assert trainer.global_step == 3 and not list(tmp_path.glob("hpc_ckpt_*"))
    assert (tmp_path / "clip.pt").is_file()


def test_latest_checkpoint_skips_unreadable_files(tmp_path):
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 10}, tmp_path / "a" / "checkpoints" / "step10.ckpt")
    torch.save({"global_step": 20}, tmp_path / "hpc_ckpt_1.ckpt")
    good = (tmp_path / "hpc_ckpt_1.ckpt").read_bytes()
    torch.save({"global_step": 30}, tmp_path / "hpc_ckpt_2.ckpt")
    data = (tmp_path / "hpc_ckpt_2.ckpt").read_bytes()
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(data[: len(data) // 2])  # a save killed half-way
    torch.save({"global_step": 40}, tmp_path / ".hpc-ckpt-3.partial.ckpt")  # hidden temporary: ignored
    assert latest_checkpoint(tmp_path) == (tmp_path / "hpc_ckpt_1.ckpt", 20)
    assert (tmp_path / "hpc_ckpt_1.ckpt").read_bytes() == good
    assert latest_checkpoint(tmp_path / "missing") is None
    # DeepSpeed: a directory per checkpoint
    deepspeed = tmp_path.parent / f"{tmp_path.name}-ds" / "hpc_ckpt_1.ckpt" / "checkpoint"
    deepspeed.mkdir(parents=True)
    (deepspeed.parent / "latest").write_text("checkpoint")  # the tag DeepSpeed writes last: a complete directory
    torch.save({"global_step": 50}, deepspeed / "mp_rank_00_model_states.pt")
    assert latest_checkpoint(deepspeed.parents[1]) == (deepspeed.parent, 50)
    out = subprocess.run([sys.executable, "-m", "train.core.preemption", "latest", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"{tmp_path / 'hpc_ckpt_1.ckpt'}\t20"


# -- against a real SLURM ------------------------------------------------------------------------------
def _slurm_skip_reason() -> str | None:
    if sys.platform != "linux":
        return "the local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "setting up the local SLURM cluster (launch/local_slurm.sh) needs root"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "slurm-wlm is not installed and apt-get is not available to install it"
    return None


def _sh(*cmd: str, timeout: float = 60) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def _job_info(job: str) -> dict[str, str]:
    out = _sh("scontrol", "show", "job", "-o", job)
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait_for(path: Path, job: str, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not path.exists():
        info = _job_info(job)
        assert time.time() < end, f"no {path} after {timeout:.0f} s: {info}"
        assert info["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED"), info
        time.sleep(0.2)


def _wait_done(job: str, timeout: float) -> dict[str, str]:
    end = time.time() + timeout
    while time.time() < end:
        info = _job_info(job)
        if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout:.0f} s: {_job_info(job)}")


@pytest.fixture(scope="module")
def local_slurm():
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    was_up = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0 if shutil.which("sinfo") else False
    t0 = time.time()
    proc = subprocess.run(["bash", str(ROOT / "launch/local_slurm.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:  # a real SLURM's configuration on this machine: not ours to replace
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"launch/local_slurm.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"local SLURM up in {time.time() - t0:.0f} s")
    yield
    if not was_up:
        subprocess.run(["bash", str(ROOT / "launch/local_slurm.sh"), "stop"], capture_output=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sbatch_preempted_job_requeues_resumes_and_matches_uninterrupted_run(tmp_path, local_slurm):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SYNTHLOOP_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SYNTHLOOP_PYTHON=sys.executable)
    pre, ref = tmp_path / "preempted", tmp_path / "reference"
    jobs: list[str] = []

    def submit(cmd: list[str]) -> str:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        job = re.findall(r"\d+", out.stdout)[-1]
        jobs.append(job)
        return job

    try:
        t0 = time.time()
        # the job to pre-empt: the template submitted with sbatch directly, 2 tasks on the one node
        job = submit(["sbatch", "--parsable", "--ntasks-per-node=2", f"--output={tmp_path}/%x-%j.out",
                      f"--export=ALL,SYNTHLOOP_RUN_DIR={pre}", "launch/slurm.sbatch", "fit", "--config", CONFIG,
                      f"--model.init_args.export_path={pre}/clip.pt"])
        # the uninterrupted reference, through the helper; it queues behind the first job (2 cores)
        ref_job = submit(["bash", "launch/slurm.sh", "--tasks-per-node", "2", "--run-dir", str(ref),
                          "--output", f"{tmp_path}/%x-%j.out", "--sbatch", "--parsable", "--", "fit",
                          "--config", CONFIG, f"--model.init_args.export_path={ref}/clip.pt"])
        # 1) graceful pre-emption once training is under way (the step-10 checkpoint exists): SIGUSR1 to
        #    the tasks, as `#SBATCH --signal=USR1@90` sends it before the time limit
        _wait_for(pre / "slurm_micro" / "version_0" / "checkpoints" / "step000010.ckpt", job)
        _sh("scancel", "--signal=USR1", job)
        t_signal = time.time() - t0
        # 2) hard requeue (no signal: what a node failure or an admin's `scontrol requeue` does) once the
        #    restarted job has written its step-40 checkpoint: it must resume from that, not from hpc_ckpt_1
        _wait_for(pre / "slurm_micro" / "version_1" / "checkpoints" / "step000040.ckpt", job)
        _sh("scontrol", "requeue", job)
        t_requeue = time.time() - t0
        # 3) SIGTERM to every process of the step (what a pre-empting scheduler sends; data workers
        #    included) once the third start has written its step-60 checkpoint: the tasks checkpoint the
        #    last finished step, exit 143, and the template requeues the job
        _wait_for(pre / "slurm_micro" / "version_2" / "checkpoints" / "step000060.ckpt", job)
        _sh("scancel", "--signal=TERM", job)
        t_term = time.time() - t0

        info = _wait_done(job, 600)
        ref_info = _wait_done(ref_job, 600)
        wall = time.time() - t0
        log = (tmp_path / f"synthloop-{job}.out").read_text()
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-5000:]
        assert ref_info["JobState"] == "COMPLETED", (tmp_path / f"synthloop-{ref_job}.out").read_text()[-5000:]
        assert info["Restarts"] == "3", info
        # the step-wide SIGTERM reached the data workers too; they ignored it (WorkerLoader)
        assert "ignored SIGTERM from pid" in log, log[-5000:]

        # SIGUSR1: checkpoint at a step boundary, requeue, restart (SLURM_RESTART_COUNT=1), resume from it
        saved = re.search(r"pre-emption: saved (\S+hpc_ckpt_1\.ckpt) at step (\d+)", log)
        assert saved, log[-5000:]
        step = int(saved.group(2))
        assert 10 <= step < 40
        assert f"requeued SLURM job {job}" in log
        assert f"[slurm.sbatch] job {job} restart 1:" in log
        assert f"resuming from {pre}/hpc_ckpt_1.ckpt (global_step {step})" in log
        assert f"Restored all states from the checkpoint at {pre}/hpc_ckpt_1.ckpt" in log
        hpc = torch.load(pre / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
        assert hpc["global_step"] == step
        # hard requeue: restart 2 resumes from the newest periodic checkpoint of the second start
        assert f"[slurm.sbatch] job {job} restart 2:" in log
        second = re.search(rf"resuming from ({re.escape(str(pre))}/slurm_micro/version_1/checkpoints/\S+\.ckpt) "
                           rf"\(global_step (\d+)\)", log)
        assert second and 40 <= int(second.group(2)) < MAX_STEPS, log[-5000:]
        assert f"Restored all states from the checkpoint at {second.group(1)}" in log
        assert not (pre / "hpc_ckpt_2.ckpt").exists()
        # SIGTERM: a checkpoint of the last finished step, exit 143 (not 0), requeue, restart 3 resumes from it
        term = re.search(r"SIGTERM: saved (\S+/version_2/checkpoints/sigterm-step(\d+)\.ckpt) at step \d+", log)
        assert term and 60 <= int(term.group(2)) < MAX_STEPS, log[-5000:]
        assert "srun exited with 143" in log and f"requeued job {job} after SIGTERM" in log
        assert f"[slurm.sbatch] job {job} restart 3:" in log
        assert f"resuming from {term.group(1)} (global_step {term.group(2)})" in log

        # the same result as the uninterrupted run: weights, optimizer, data-stream positions, zero-shot table
        final_pre, final_ref = latest_checkpoint(pre), latest_checkpoint(ref)
        assert final_pre[1] == final_ref[1] == MAX_STEPS
        a = torch.load(final_pre[0], map_location="cpu", weights_only=False)
        b = torch.load(final_ref[0], map_location="cpu", weights_only=False)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert a["OnlineDataModule"] == b["OnlineDataModule"]
        assert a["OnlineDataModule"]["consumed_per_rank"] == [MAX_STEPS * 8, MAX_STEPS * 8]
        table = re.compile(r"zero-shot accuracy at step 80 \(\d+ images\)\n(?:.*\n){6}")
        ref_log = (tmp_path / f"synthloop-{ref_job}.out").read_text()
        assert table.search(log).group(0) == table.search(ref_log).group(0)
        print(f"SIGUSR1 at {t_signal:.0f} s (checkpoint at step {step}), scontrol requeue at {t_requeue:.0f} s "
              f"(resumed at step {second.group(2)}), SIGTERM at {t_term:.0f} s (checkpoint at step "
              f"{term.group(2)}), both jobs done at {wall:.0f} s")
    finally:
        for j in jobs:
            subprocess.run(["scancel", j], capture_output=True)
