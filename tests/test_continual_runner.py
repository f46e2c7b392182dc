"""The continual runner: accuracy matrix on every task, exact resume at task and step level, replay reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

import train.gift.runner as runner
from train.core.callbacks import DataMonitor

COMMON = dict(tasks=["shape", "digits"], method="gift", model_name="synthloop-micro-vit32", steps_per_task=4,
              batch_size=6, lr=1e-3, warmup_steps=1, replay_size=12, replay_backend={"backend": "world",
                                                                                     "image_size": 32},
              eval_per_class=3, checkpoint_every=2, seed=3)


def _matrix_file(path):
    return np.array(json.loads(path.read_text())["matrix"], dtype=float)


def _matrix(out):
    return _matrix_file(out / "accuracy_matrix.json")


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = tmp_path / "full"
    metrics = runner.continual(out_dir=str(full), replay_cache=str(tmp_path / "cache"), **COMMON)
    assert set(metrics) == {"transfer", "avg", "last", "bwt"}
    a = _matrix(full)
    assert a.shape == (2, 2) and not np.isnan(a).any()
    for f in ("accuracy_matrix.csv", "accuracy_matrix.png", "zeroshot.json", "task00-shape/model.pt",
              "val_accuracy_matrix.json", "zeroshot_val.json", "items/zeroshot.json", "items/after_task01.json"):
        assert (full / f).exists(), f
    items = json.loads((full / "items" / "after_task01.json").read_text())
    assert set(items) == {"test", "val"} and set(items["test"]) == set(items["val"]) == {"shape", "digits"}
    for name, row in zip(("shape", "digits"), a[1]):  # the matrix row is the mean of the per-item record
        assert abs(100 * items["test"][name].count("1") / len(items["test"][name]) - row) < 1e-9
    v = _matrix_file(full / "val_accuracy_matrix.json")
    assert v.shape == (2, 2) and not np.isnan(v).any()
    assert not (full / "task00-shape" / "checkpoints").exists()  # a finished task keeps model.pt only

    # crash in the middle of task 1 (after its step-2 checkpoint), then restart with the same call
    class Crash(DataMonitor):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3 and "task01" in str(trainer.default_root_dir):
                raise RuntimeError("simulated kill")
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    part = tmp_path / "part"
    monkeypatch.setattr(runner, "DataMonitor", Crash)
    with pytest.raises(RuntimeError, match="simulated kill"):
        runner.continual(out_dir=str(part), replay_cache=str(tmp_path / "cache"), **COMMON)
    assert json.loads((part / "state.json").read_text())["done"] == 1
    assert (part / "task01-digits" / "checkpoints" / "last.ckpt").exists()
    monkeypatch.setattr(runner, "DataMonitor", DataMonitor)

    # the replay sets exist now: a resumed run must not generate any image again
    def no_generation(*a, **k):
        raise AssertionError("replay set regenerated on resume")

    monkeypatch.setattr("datagen.gift.replay._generate_part", no_generation)
    runner.continual(out_dir=str(part), replay_cache=str(tmp_path / "cache"), **COMMON)
    np.testing.assert_allclose(_matrix(part), a, atol=1e-9)


def test_a_run_directory_refuses_another_sequence(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"done": 1, "tasks": ["color"], "method": "gift"}))
    with pytest.raises(ValueError, match="holds another task sequence"):
        runner.continual(out_dir=str(out), replay_cache=str(tmp_path / "cache"), **COMMON)


def test_a_task_lr_for_a_task_outside_the_sequence_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"task_lr: names \[.digit.\].*fix the task names"):
        runner.continual(out_dir=str(tmp_path / "run"), replay_cache=str(tmp_path / "cache"),
                         **{**COMMON, "task_lr": {"digit": 5e-3}})
    assert not (tmp_path / "cache").exists()  # refused before any replay set is made


def test_task_stream_seeds_come_from_a_seed_sequence():
    """Each task's stream seed is SeedSequence([seed, t])'s first word: distinct over seeds x tasks (the old
    seed * 1000 + t made seed 1's task 1000 the same stream as seed 2's task 0)."""
    assert runner.task_stream_seed(42, 3) == int(np.random.SeedSequence([42, 3]).generate_state(1)[0])
    seeds = {runner.task_stream_seed(s, t) for s in range(4) for t in range(0, 2001, 250)}
    assert len(seeds) == 4 * 9
