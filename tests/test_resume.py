"""Exact resume: kill -9 a run at a random step, rerun the same command, and the loss trace from the
checkpoint on equals an uninterrupted run's (CPU, deterministic), for every landed recipe.

* CLIP pre-training (``synthloop fit``, 2 processes under torchrun, DDP): ``resume: auto`` in the config
  makes the rerun continue from the run directory's newest complete checkpoint (model, optimizer, LR
  schedule, both ranks' data-stream positions); the per-step losses and the exported weights equal the
  uninterrupted run's bit for bit.
* GIFT continual (``synthloop continual``, one process): a killed sequence resumes at the interrupted
  task's last step checkpoint (replay sets reused, finished tasks reloaded); per-step losses of every
  task, the accuracy matrix and the final weights equal the uninterrupted run's.
* Vision-Zero self-play on a tiny random Qwen2.5-VL (``synthloop fit``, one process, ``resume: auto``):
  per-step losses, the phase history and the exported ``save_pretrained`` weights equal the
  uninterrupted run's.

The kill step is random (printed on failure; ``SYNTHLOOP_TEST_KILL_AT`` fixes it). The launcher and
every process under it (torchrun starts its workers in sessions of their own) get SIGKILL at once, as
in a node failure: nothing can flush or clean up.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from train.core.checkpoints import find_resume_checkpoint
from train.core.resilience import read_trace

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 420


def _env(trace: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SYNTHLOOP_TRACE=str(trace),
                SYNTHLOOP_LOG="WARNING")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _kill_at(cmd: list[str], cwd: Path, env: dict[str, str], trace: Path, kill_at: int, ready) -> int:
    """Start ``cmd``; once the trace holds ``kill_at`` records and ``ready()`` holds, SIGKILL its process
    group. Returns the number of complete trace records the killed run left."""
    log = open(cwd / "killed.log", "w")
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            n = len(trace.read_text().splitlines()) if trace.exists() else 0
            if n >= kill_at and ready():
                _kill_tree(p)
                return len(_records(trace))
            if p.poll() is not None:
                pytest.fail(f"run ended (rc {p.returncode}) before the kill at record {kill_at}: "
                            + (cwd / "killed.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("run too slow to reach the kill point")
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            _kill_tree(p)
        log.close()


def _kill_tree(p: subprocess.Popen) -> None:
    """SIGKILL ``p`` and all its descendants together, and wait until every one of them is gone."""
    procs = [psutil.Process(p.pid)]
    procs += procs[0].children(recursive=True)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    p.wait(timeout=60)
    psutil.wait_procs(procs[1:], timeout=60)


def _kill_point(low: int, high: int) -> int:
    fixed = os.environ.get("SYNTHLOOP_TEST_KILL_AT")
    return int(fixed) if fixed else random.randint(low, high)


def _records(trace: Path) -> list[dict]:
    out = []
    for line in trace.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return out


def _first_after(trace: Path, n: int) -> tuple[str, int]:
    """(run, step) of the first record the rerun wrote (after the ``n`` records of the killed run)."""
    rec = _records(trace)[n]
    return rec["run"], rec["step"]


def _uninterrupted_then_killed(cmd, tmp_path: Path, steps: int, kill_range: tuple[int, int], run_name: str):
    """Run ``cmd`` uninterrupted in ``full/``, then in ``part/`` killed at a random step once a checkpoint
    exists (``fit`` runs with ``resume: auto``). Returns (full, part, reference trace, records the killed
    run left, global step of the checkpoint a rerun resumes from, the reproduce hint)."""
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    _run(cmd(full), full, _env(full / "trace.jsonl"))
    reference = read_trace(full / "trace.jsonl")
    assert sorted(s for _, s in reference) == list(range(1, steps + 1))
    kill_at = _kill_point(*kill_range)
    ckpts = part / "run" / run_name / "version_0" / "checkpoints"
    n = _kill_at(cmd(part), part, _env(part / "trace.jsonl"), part / "trace.jsonl", kill_at,
                 lambda: find_resume_checkpoint(ckpts) is not None)
    why = f"(killed after {n} steps; SYNTHLOOP_TEST_KILL_AT={kill_at} reproduces)"
    assert n < steps, why
    k0 = torch.load(find_resume_checkpoint(ckpts), map_location="cpu", weights_only=True)["global_step"]
    return full, part, reference, n, k0, why


@pytest.mark.slow
def test_clip_ddp_kill9_and_resume_equals_uninterrupted(tmp_path):
    def cmd(d: Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29651",
                "-m", "train.cli", "fit", "--config", str(ROOT / "tests/configs/clip_resume.yaml"),
                "--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={d}/run",
                f"--trainer.logger.init_args.save_dir={d}/run", f"--model.init_args.export_path={d}/clip.pt"]

    full, part, reference, n, k0, why = _uninterrupted_then_killed(cmd, tmp_path, 10, (3, 8), "clip_resume")
    ckpts = part / "run" / "clip_resume" / "version_0" / "checkpoints"
    assert 2 <= k0 <= n, why
    _run(cmd(part), part, _env(part / "trace.jsonl"))  # the same command again

    resumed = read_trace(part / "trace.jsonl")
    assert resumed == reference, why
    assert _first_after(part / "trace.jsonl", n) == ("run", k0 + 1), why  # continued from that checkpoint
    assert not list((part / "run" / "clip_resume").glob("version_1")), "resume must reuse the run directory"
    a = torch.load(full / "clip.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(part / "clip.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), why
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["OnlineDataModule"]["consumed_per_rank"] == [80, 80]


GIFT_ARGS = ["--tasks=[shape,digits]", "--method=gift", "--model_name=synthloop-micro-vit32", "--steps_per_task=6",
             "--batch_size=4", "--lr=1e-3", "--warmup_steps=1", "--replay_size=8",
             "--replay_backend={backend: world, image_size: 32}", "--eval_per_class=2", "--checkpoint_every=2",
             "--seed=3"]


@pytest.mark.slow
def test_gift_continual_kill9_and_resume_equals_uninterrupted(tmp_path):
    cache = tmp_path / "cache"

    def cmd(d: Path) -> list[str]:
        return [sys.executable, "-m", "train.cli", "continual", *GIFT_ARGS, f"--out_dir={d}/run",
                f"--replay_cache={cache}"]

    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    _run(cmd(full), full, _env(full / "trace.jsonl"))
    reference = read_trace(full / "trace.jsonl")
    assert len(reference) == 12 and {r for r, _ in reference} == {"task00-shape", "task01-digits"}

    kill_at = _kill_point(3, 10)  # anywhere from task 0's second checkpoint to task 1's last steps
    n = _kill_at(cmd(part), part, _env(part / "trace.jsonl"), part / "trace.jsonl", kill_at, lambda: True)
    why = f"(killed after {n} trace records; SYNTHLOOP_TEST_KILL_AT={kill_at} reproduces)"
    assert n < 12, why
    state = json.loads((part / "run" / "state.json").read_text()) if (part / "run" / "state.json").exists() else {}
    task = ["task00-shape", "task01-digits"][state.get("done", 0)]  # the interrupted task
    resume_from = find_resume_checkpoint(part / "run" / task / "checkpoints")
    k0 = torch.load(resume_from, map_location="cpu", weights_only=True)["global_step"] if resume_from else 0
    _run(cmd(part), part, _env(part / "trace.jsonl"))

    assert read_trace(part / "trace.jsonl") == reference, why
    assert json.loads((part / "run" / "state.json").read_text())["done"] == 2
    fm = json.loads((full / "run" / "accuracy_matrix.json").read_text())
    pm = json.loads((part / "run" / "accuracy_matrix.json").read_text())
    assert pm == fm, why
    a = torch.load(full / "run" / "task01-digits" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(part / "run" / "task01-digits" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), why
    # finished tasks are not trained again; the interrupted one continues from its last checkpoint
    assert _first_after(part / "trace.jsonl", n) == (task, k0 + 1), why


@pytest.mark.slow
def test_visionzero_qwen_kill9_and_resume_equals_uninterrupted(tmp_path):
    """Vision-Zero self-play on a tiny random ``Qwen2_5_VLForConditionalGeneration`` (the real-scale config's
    policy class, full fine-tuning, π_ref a second copy): kill -9 mid-run, the same command again, and the
    per-step losses, the phase history and the exported weights equal an uninterrupted run's."""
    from datagen.text.corpus import world_corpus
    from models.tiny_hf import build_tiny_qwen25_vl

    policy = build_tiny_qwen25_vl(tmp_path / "qwen", texts=world_corpus(200))

    def cmd(d: Path) -> list[str]:
        return [sys.executable, "-m", "train.cli", "fit", "--config", str(ROOT / "tests/configs/visionzero_qwen_resume.yaml"),
                f"--model.init_args.policy_path={policy}",
                f"--model.init_args.prompts_path={ROOT / 'configs/visionzero/prompts/game.yaml'}",
                f"--model.init_args.export_path={d}/export", f"--trainer.default_root_dir={d}/run",
                f"--trainer.logger.init_args.save_dir={d}/run"]

    full, part, reference, n, k0, why = _uninterrupted_then_killed(cmd, tmp_path, 6, (3, 5), "vz_resume")
    assert all(isinstance(v, float) for v in reference.values()), reference  # the loss is logged every step
    _run(cmd(part), part, _env(part / "trace.jsonl"))

    assert read_trace(part / "trace.jsonl") == reference, why
    assert _first_after(part / "trace.jsonl", n) == ("run", k0 + 1), why
    assert (json.loads((part / "export" / "phase_history.json").read_text())
            == json.loads((full / "export" / "phase_history.json").read_text())), why
    from safetensors.torch import load_file

    a, b = load_file(full / "export" / "model.safetensors"), load_file(part / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), why
