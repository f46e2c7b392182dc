"""Hardening of the resume path, each probe with its exact outcome (the real ``synthloop`` command on the
micro CLIP config, one process):

* damaged checkpoints (4 KiB flipped inside a tensor, truncated) are never used: ``--resume auto`` falls
  back to the newest intact one, ``--ckpt_path`` and ``launch/consolidate.py`` refuse them in one line;
* ``--ckpt_path`` goes through the same checker and rule (a folder: the rule picks); the config, not the
  checkpoint's stored hyperparameters, decides (``--model.init_args.lr`` at resume is the LR trained
  with); a different model shape is refused in one line;
* SIGTERM mid-run writes a checkpoint of the last finished step and exits 143; ``--resume auto`` then
  continues exactly (the loss trace equals an uninterrupted run's);
* no abbreviated options; a short experiment does not replace the config's ``publish_path``;
  leftovers of killed writes are removed at the next start; progress is logged when output is a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from models.io import remove_orphans
from train.core.checkpoints import latest_checkpoint
from train.core.resilience import read_trace

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/clip_micro.yaml"
TIMEOUT = 300


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def _fit(cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", str(MICRO), *args], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def _damage(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 4096):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    """One finished 4-step micro run (checkpoints at steps 2 and 4, last.ckpt)."""
    cwd = tmp_path_factory.mktemp("run4")
    _fit(cwd)
    return cwd


def _ckpts(cwd: Path) -> Path:
    return cwd / "runs/clip_micro/version_0/checkpoints"


# -- damaged checkpoints ---------------------------------------------------------------------------
def test_resume_rule_skips_a_checkpoint_with_flipped_bytes_and_falls_back(run4, tmp_path, caplog):
    last = _ckpts(run4) / "last.ckpt"
    older = torch.load(last, map_location="cpu", weights_only=True)
    older["global_step"] = 2  # an intact, older checkpoint to fall back to
    torch.save(older, tmp_path / "older.ckpt")
    _damage(last, tmp_path / "last.ckpt")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0].name == "older.ckpt" and found[1] == 2
    assert "fails its CRC-32 check; falling back to the next one" in caplog.text


@pytest.mark.parametrize("kind", ["flipped", "truncated", "missing"])
def test_ckpt_path_refuses_a_damaged_checkpoint_in_one_line(run4, tmp_path, kind):
    bad = tmp_path / "bad.ckpt"
    last = _ckpts(run4) / "last.ckpt"
    if kind == "flipped":
        _damage(last, bad)
    elif kind == "truncated":
        bad.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = _fit(tmp_path, "--trainer.max_steps=6", f"--ckpt_path={bad}", check=False)
    assert proc.returncode == 2
    expected = {"flipped": "fails its CRC-32 check", "truncated": "not a complete torch.save archive",
                "missing": "no such file or directory"}[kind]
    line = _last_line(proc)
    assert line.startswith(f"synthloop: error: --ckpt_path {bad}: ") and expected in line, line


def test_consolidate_refuses_a_damaged_checkpoint(run4, tmp_path):
    bad = tmp_path / "bad.ckpt"
    _damage(_ckpts(run4) / "last.ckpt", bad)
    proc = subprocess.run([sys.executable, "launch/consolidate.py", str(bad), "-o", str(tmp_path / "out.pt")], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0 and not (tmp_path / "out.pt").exists()
    assert "fails its CRC-32 check" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


# -- --ckpt_path: same rule, the config decides ------------------------------------------------------
def test_ckpt_path_folder_resumes_by_the_rule_and_config_lr_wins(run4, tmp_path):
    """``--model.init_args.lr 0.05`` at resume: the restored optimizer trains at 0.05 x the schedule (it
    used to keep the checkpoint's 0.001 silently)."""
    cwd = tmp_path
    ref = _fit(cwd, "--trainer.max_steps=6", f"--ckpt_path={_ckpts(run4)}", "--run_name=ref")
    assert "resuming from" in ref.stderr and "last.ckpt (step 4)" in ref.stderr
    new = _fit(cwd, "--trainer.max_steps=6", f"--ckpt_path={_ckpts(run4) / 'last.ckpt'}", "--model.init_args.lr=0.05")
    assert "lr=0.05 (checkpoint: 0.001)" in new.stderr

    def final_lr(stderr: str) -> float:
        run = [ln for ln in stderr.splitlines() if "wrote open_clip checkpoint" in ln][-1].rsplit(" ", 1)[1]
        state = torch.load(Path(cwd, run).parent / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        return state["optimizer_states"][0]["param_groups"][0]["lr"]

    assert final_lr(new.stderr) == pytest.approx(50 * final_lr(ref.stderr), rel=1e-9)


def test_ckpt_path_with_a_different_model_shape_is_refused(run4, tmp_path):
    proc = _fit(tmp_path, "--trainer.max_steps=6", f"--ckpt_path={_ckpts(run4) / 'last.ckpt'}",
                "--model.init_args.model_name=synthloop-tiny-vit32", check=False)
    assert proc.returncode == 2
    line = _last_line(proc)
    assert "the checkpoint was trained with a different model shape" in line and "positional_embedding" in line


# -- SIGTERM -----------------------------------------------------------------------------------------
def test_sigterm_checkpoints_exits_143_and_resume_auto_is_exact(tmp_path):
    steps = ["--trainer.max_steps=14", "--trainer.val_check_interval=14"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    _fit(ref_dir, *steps, SYNTHLOOP_TRACE=str(ref_dir / "trace.jsonl"))
    trace = cut_dir / "trace.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "train.cli", "fit", "--config", str(MICRO), *steps], cwd=cut_dir,
                         env=_env(SYNTHLOOP_TRACE=str(trace)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while (not trace.exists() or len(trace.read_text().splitlines()) < 5) and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 143, err[-3000:]
    assert _last_line(subprocess.CompletedProcess([], 143, "", err)).startswith("synthloop: stopped by SIGTERM")
    saved = list(_ckpts(cut_dir).glob("sigterm-step*.ckpt"))
    assert len(saved) == 1
    stopped_at = int(saved[0].stem.split("step")[1])
    assert 5 <= stopped_at < 14
    assert not (cut_dir / "runs/clip_micro/version_0/clip_final.pt").exists()  # an unfinished run exports nothing
    _fit(cut_dir, *steps, "--resume=auto", SYNTHLOOP_TRACE=str(trace))
    ref = {step: loss for (_, step), loss in read_trace(ref_dir / "trace.jsonl").items()}
    cut = {step: loss for (_, step), loss in read_trace(trace).items()}
    assert max(cut) == max(ref) == 14
    assert [cut[s] for s in sorted(ref) if s > stopped_at] == [ref[s] for s in sorted(ref) if s > stopped_at]


@pytest.mark.slow
def test_sigterm_reaching_rank_0_alone_mid_step_stops_both_ranks_at_one_boundary(tmp_path):
    """Two DDP ranks under torchrun; SIGTERM goes to rank 0's process only, so rank 1 never has the flag.
    Lightning's own end-of-step check used to stop rank 0 alone: it entered the checkpoint's collectives
    while rank 1 waited in the next step's broadcast, and both hung (seen in CI under the SLURM test).
    Now rank 0's flag is broadcast at the next step start: both ranks stop there and write one checkpoint."""
    import psutil

    trace = tmp_path / "trace.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29671", "-m",
           "train.cli", "fit", "--config", str(ROOT / "tests/configs/clip_resume.yaml"), "--trainer.devices=2",
           "--trainer.strategy=ddp", "--trainer.max_steps=40", f"--trainer.default_root_dir={tmp_path}/run",
           f"--trainer.logger.init_args.save_dir={tmp_path}/run"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env={**_env(SYNTHLOOP_TRACE=str(trace)), "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while (not trace.exists() or len(trace.read_text().splitlines()) < 4) and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rank0 = [c for c in psutil.Process(p.pid).children(recursive=True)
             if c.environ().get("RANK") == "0" and "train.cli" in " ".join(c.cmdline())]
    assert len(rank0) == 1, rank0
    rank0[0].send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for c in psutil.Process(p.pid).children(recursive=True):
            c.kill()
        p.kill()
        pytest.fail("the ranks hung after a SIGTERM to rank 0 alone")
    saved = list((tmp_path / "run" / "clip_resume" / "version_0" / "checkpoints").glob("sigterm-step*.ckpt"))
    assert len(saved) == 1, err[-3000:]
    assert int(saved[0].stem.split("step")[1]) < 40


# -- mistakes that used to overwrite or be silently accepted ----------------------------------------
def test_an_abbreviated_option_is_refused(tmp_path):
    proc = _fit(tmp_path, "--trainer.max_step=3", check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --trainer.max_step=3" in _last_line(proc)
    assert not (tmp_path / "runs").exists()


def test_a_short_experiment_does_not_replace_the_published_checkpoint(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["model"]["init_args"]["publish_path"] = "published/clip_final.pt"
    path = tmp_path / "pub.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = lambda *a: subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", str(path), *a],  # noqa: E731
                                    cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    short = run("--trainer.max_steps=2")
    assert short.returncode == 0 and "will not publish published/clip_final.pt" in short.stderr
    assert not (tmp_path / "published/clip_final.pt").exists()
    assert (tmp_path / "runs/clip_micro/version_0/clip_final.pt").exists()  # its export: in its run directory
    full = run()
    assert full.returncode == 0 and "published as: published/clip_final.pt" in full.stdout
    # the progress is logged line by line when output is not a terminal
    assert "train.progress: step 4/4 (100%) | loss " in full.stderr and "ETA" in full.stderr


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    keep = [tmp_path / "last.ckpt", tmp_path / f".x.ckpt.tmp-{os.getpid()}"]  # a live writer's temp stays
    gone = [tmp_path / ".last.ckpt.partial", tmp_path / ".y.ckpt.tmp-999999999", tmp_path / ".hpc-ckpt-2.partial"]
    for p in keep + gone:
        p.write_bytes(b"x")
    (tmp_path / ".z.ckpt.partial").mkdir()  # a DeepSpeed checkpoint directory being written
    assert sorted(remove_orphans(tmp_path)) == sorted([p.name for p in gone] + [".z.ckpt.partial"])
    assert all(p.exists() for p in keep)
