"""Failure handling: non-finite losses, failing samples, torn/corrupt checkpoints, unsafe loading, and ranks
that die or hang (2 processes under torchrun: the survivor exits with an error in bounded time)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tests.conftest import CountingGenerator

from train.core.checkpoints import (AtomicCheckpointIO, AtomicModelCheckpoint, checkpoint_problem, commit,
                                    find_resume_checkpoint, harden_trainer, latest_checkpoint, partial_path)
from train.core.datamodule import OnlineDataModule
from train.core.resume import apply_resume_auto
from train.core.resilience import (DEFAULT_MAX_NONFINITE, MAX_NONFINITE_ENV, FaultInjection, NonFiniteGuard,
                                   NonFiniteLossError, guard_loss)

ROOT = Path(__file__).resolve().parents[1]


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["x"]).pow(2).mean()
        self.log("train/loss", loss)
        return guard_loss(self, loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.adam_steps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))
        state = trainer.optimizers[0].state.get(pl_module.layer.weight, {})
        self.adam_steps.append(float(state.get("step", 0)))


def _trainer(tmp_path: Path, max_steps: int, callbacks: list, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
                      callbacks=callbacks, enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint)
                                                                    for c in callbacks), **kw)


def _data(**kw) -> OnlineDataModule:
    return OnlineDataModule(generator=CountingGenerator(**kw), batch_size=4, seed=1)


# -- non-finite losses, failing samples ----------------------------------------------------------
def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    snaps, guard = Snapshots(), NonFiniteGuard(max_consecutive=3)
    trainer = _trainer(tmp_path, 5, [snaps, guard, FaultInjection(nan_at_batches=[2])])
    trainer.fit(Tiny(), datamodule=_data())
    assert guard.total == 1 and guard.consecutive == 0
    assert torch.equal(snaps.params[2], snaps.params[1])  # the NaN step changed no parameter ...
    assert snaps.adam_steps[2] == snaps.adam_steps[1]  # ... and no optimizer state
    assert not torch.equal(snaps.params[3], snaps.params[2]) and torch.isfinite(snaps.params[-1]).all()
    assert trainer.global_step == 5


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, 20, [NonFiniteGuard(max_consecutive=3), FaultInjection(nan_at_batches=range(1, 20))])
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive training steps had a non-finite loss \(last value "
                                                 r"nan, at global step 3; 3 skipped in all\)"):
        trainer.fit(Tiny(), datamodule=_data())


def test_the_nonfinite_limit_defaults_to_25_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(MAX_NONFINITE_ENV, raising=False)
    assert NonFiniteGuard().max_consecutive == DEFAULT_MAX_NONFINITE == 25
    monkeypatch.setenv(MAX_NONFINITE_ENV, "7")
    assert NonFiniteGuard().max_consecutive == 7 and NonFiniteGuard(max_consecutive=3).max_consecutive == 3


def test_a_failing_sample_is_dropped_and_counted_not_fatal(tmp_path):
    dm = _data(raise_every=3)  # every third sample's generator call raises
    trainer = _trainer(tmp_path, 4, [])
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 4
    counters = dm.counters()
    assert counters["consumed"] == 16 and counters["dropped_invalid"] >= 7


# -- checkpoints ----------------------------------------------------------------------------------
def _run_with_checkpoints(tmp_path: Path, max_steps: int, ckpt_path: str | None = None) -> pl.Trainer:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_last=True,
                                        save_top_k=1, filename="step{step:06d}", auto_insert_metric_name=False)
    trainer = harden_trainer(_trainer(tmp_path, max_steps, [ckpt]))
    assert type(ckpt) is AtomicModelCheckpoint and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    torch.manual_seed(0)
    trainer.fit(Tiny(), datamodule=_data(), ckpt_path=ckpt_path)
    return trainer


def test_torn_last_checkpoint_is_skipped_and_loading_it_names_the_file(tmp_path, caplog):
    _run_with_checkpoints(tmp_path, 4)
    ckpts = tmp_path / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt"]  # no temp file left
    last = ckpts / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a non-atomic write killed half-way leaves
    (ckpts / f".{last.name}.partial-123").write_bytes(data[:100])  # a temp file orphaned by a kill -9
    assert "not a complete torch.save archive" in checkpoint_problem(last)
    found = find_resume_checkpoint(ckpts)
    assert found == str(ckpts / "step000004.ckpt")
    assert "skipping checkpoint" in caplog.text and str(last) in caplog.text
    with pytest.raises(RuntimeError, match=rf"checkpoint {last} is unreadable"):
        _run_with_checkpoints(tmp_path / "again", 6, ckpt_path=str(last))
    trainer = _run_with_checkpoints(tmp_path, 6, ckpt_path=found)  # resumes from the intact one
    assert trainer.global_step == 6


def test_atomic_save_keeps_the_old_checkpoint_when_a_write_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Tiny}, path)  # pickles a class: not plain data
    with pytest.raises(RuntimeError, match="cannot load checkpoint .*evil.ckpt.*Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def _fake_deepspeed_dir(path: Path, step: int) -> None:
    (path / "checkpoint").mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    torch.save({"global_step": step}, path / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"x": torch.zeros(2)}, path / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


def test_deepspeed_directories_are_swapped_in_and_checked(tmp_path):
    ckpts = tmp_path / "ckpts"
    _fake_deepspeed_dir(ckpts / "last.ckpt", 2)
    assert checkpoint_problem(ckpts / "last.ckpt") is None
    new = Path(partial_path(ckpts / "last.ckpt"))
    _fake_deepspeed_dir(new, 4)
    assert find_resume_checkpoint(ckpts) == str(ckpts / "last.ckpt")  # the partial one is never a candidate
    commit(new, ckpts / "last.ckpt")
    assert not new.exists() and sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    shard = ckpts / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt"
    assert torch.load(shard, weights_only=True)["global_step"] == 4
    # a kill between the two renames of the swap leaves the previous checkpoint as .last.ckpt.old
    os.rename(ckpts / "last.ckpt", ckpts / ".last.ckpt.old")
    assert find_resume_checkpoint(ckpts) == str(ckpts / ".last.ckpt.old")
    shard = ckpts / ".last.ckpt.old" / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:50])
    assert "zero_pp_rank_0" in checkpoint_problem(ckpts / ".last.ckpt.old")
    assert find_resume_checkpoint(ckpts) is None


def test_the_resume_rule_highest_step_then_newest_complete_ones_only(tmp_path, caplog):
    """The one selector (--resume auto, synthloop continual, the SLURM requeue): the highest global_step wins
    over a newer file; a torn file, a hidden partial one and a temporary are never picked."""
    run = tmp_path / "run"
    (run / "version_0" / "checkpoints").mkdir(parents=True)
    far = run / "version_0" / "checkpoints" / "step000040.ckpt"
    torch.save({"global_step": 40}, far)
    torch.save({"global_step": 30}, run / "last.ckpt")  # newer, but behind: the step decides, not the name
    os.utime(far, (1_000_000, 1_000_000))
    torn = run / "hpc_ckpt_2.ckpt"
    torch.save({"global_step": 90}, torn)
    torn.write_bytes(torn.read_bytes()[:60])  # a save killed half-way on a non-atomic file system
    torch.save({"global_step": 99}, run / ".hpc-ckpt-3.partial")  # being written: hidden, never a candidate
    torch.save({"global_step": 98}, run / ".last.ckpt.tmp-123")  # an atomic write's orphaned temporary
    torch.save({"global_step": 97}, run / ".step000097.ckpt")  # hidden: never a candidate
    assert latest_checkpoint(run) == (far, 40)
    assert find_resume_checkpoint(run) == str(far)
    assert "skipping checkpoint" in caplog.text and str(torn) in caplog.text
    # equal steps: the newest file
    same = run / "version_0" / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 40}, same)
    assert latest_checkpoint(run) == (same, 40)
    # a checkpoint without a step is not a Lightning checkpoint: skipped, named
    torch.save({"weights": torch.ones(1)}, run / "step999999.ckpt")
    assert latest_checkpoint(run) == (same, 40) and "step999999.ckpt" in caplog.text
    # a DeepSpeed directory is one candidate (ZeRO-3 names its rank-0 shard zero_pp_rank_0_...); never searched inside
    ds = run / "ds" / "last.ckpt"
    (ds / "checkpoint").mkdir(parents=True)
    (ds / "latest").write_text("checkpoint")
    torch.save({"global_step": 60}, ds / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    torch.save({"global_step": 70}, ds / "checkpoint" / "inner.ckpt")
    assert latest_checkpoint(run) == (ds, 60)
    assert latest_checkpoint(tmp_path / "missing") is None


def test_resume_auto_finds_the_run_directory_and_pins_its_version(tmp_path):
    from jsonargparse import Namespace

    ckpts = tmp_path / "logs" / "exp" / "version_3" / "checkpoints"
    ckpts.mkdir(parents=True)
    (tmp_path / "logs" / "exp" / "version_7").mkdir()  # newer, but without a checkpoint
    torch.save({"global_step": 2}, ckpts / "last.ckpt")
    cfg = Namespace(ckpt_path=None, trainer=Namespace(
        default_root_dir=str(tmp_path), callbacks=[],
        logger=Namespace(class_path="pytorch_lightning.loggers.TensorBoardLogger",
                         init_args=Namespace(save_dir=str(tmp_path / "logs"), name="exp", version=None))))
    assert apply_resume_auto(cfg) == str(ckpts / "last.ckpt")
    assert cfg.ckpt_path == str(ckpts / "last.ckpt") and cfg.trainer.logger.init_args.version == 3
    fresh = Namespace(ckpt_path=None, trainer=Namespace(default_root_dir=str(tmp_path / "new"), callbacks=[],
                                                        logger=cfg.trainer.logger.clone()))
    fresh.trainer.logger.init_args.save_dir = str(tmp_path / "new")
    fresh.trainer.logger.init_args.version = None
    assert apply_resume_auto(fresh) is None and fresh.ckpt_path is None


def test_trust_remote_code_is_off_unless_a_config_turns_it_on():
    """No code path passes trust_remote_code=True, and every parameter of that name defaults to False."""
    offenders = []
    for folder in ("train", "datagen", "models", "launch", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and \
                        isinstance(node.value, ast.Constant) and node.value.value is not False:
                    offenders.append(f"{path}:{node.value.lineno}")
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args.args + node.args.kwonlyargs
                    defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                    defaults += node.args.kw_defaults
                    for arg, default in zip(args, defaults):
                        if arg.arg == "trust_remote_code" and not (isinstance(default, ast.Constant)
                                                                   and default.value is False):
                            offenders.append(f"{path}:{node.lineno} ({node.name})")
    assert not offenders, offenders


# -- ranks that die or hang -----------------------------------------------------------------------
def _two_ranks(tmp_path: Path, port: int, **env_extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "train.cli", "fit", "--config", str(ROOT / "tests/configs/clip_resume.yaml"), "--trainer.devices=2",
           "--trainer.strategy=ddp", "--collective_timeout=10", f"--trainer.default_root_dir={tmp_path}",
           f"--trainer.logger.init_args.save_dir={tmp_path}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_a_dying_rank_ends_the_run_with_an_error(tmp_path):
    proc, wall = _two_ranks(tmp_path, 29671, SYNTHLOOP_TEST_DIE_AT_STEP="2")
    out = proc.stdout + proc.stderr
    assert "FaultInjection: rank 1 dies at step 2" in out
    assert proc.returncode != 0, out[-3000:]
    assert wall < 200, f"took {wall:.0f} s"  # start-up + a few steps; never the 30-minute default timeout


@pytest.mark.slow
def test_a_stuck_rank_makes_the_others_fail_after_the_collective_timeout(tmp_path):
    proc, wall = _two_ranks(tmp_path, 29672, SYNTHLOOP_TEST_HANG_AT_STEP="2")
    out = proc.stdout + proc.stderr
    assert "FaultInjection: rank 1 hangs at step 2" in out
    assert proc.returncode != 0, out[-3000:]
    assert "Timed out waiting 10000ms" in out, out[-3000:]  # rank 0 gave up after --collective_timeout=10
    assert wall < 220, f"took {wall:.0f} s"
