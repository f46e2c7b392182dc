"""Train/eval modes in the GIFT runner, with the toy's own model class (``synthloop-tiny-rn64``: BatchNorm).

The runner evaluates between tasks; before the fix that left the model in eval mode, so an uninterrupted
sequence fine-tuned later tasks with frozen BatchNorm while a restarted one (a fresh model, train mode)
used batch statistics: restarted after task 0, task 1's weights differed in 107 of 108 tensors and all 38
BatchNorm buffers. Here a sequence stopped at a task boundary and one killed mid-task must both end with
exactly the weights and buffers of the uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

import train.gift.runner as runner
from train.core.callbacks import DataMonitor
from train.core.modes import eval_mode, modes_summary

COMMON = dict(tasks=["shape", "digits"], method="gift", model_name="synthloop-tiny-rn64", steps_per_task=3,
              batch_size=4, lr=1e-3, warmup_steps=1, replay_size=8, replay_backend={"backend": "world",
                                                                                    "image_size": 64},
              eval_per_class=1, checkpoint_every=1, seed=5)


def test_eval_mode_restores_every_submodule_own_mode():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    net.train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    with eval_mode(net):
        assert modes_summary(net) == {"train": 0, "eval": 4}
    assert [m.training for m in net.modules()] == [True, True, False, True]


def _weights(out):
    return torch.load(out / "task01-digits" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


class _Modes(DataMonitor):
    """Records the student's and teacher's modes at every training step."""

    seen: list[tuple[str, bool, bool | None]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        teacher = pl_module.teacher.training if pl_module.teacher is not None else None
        _Modes.seen.append((str(trainer.default_root_dir), pl_module.model.training, teacher))
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


@pytest.mark.slow
def test_stopped_at_a_boundary_or_mid_task_trains_the_same_batchnorm_model(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(runner, "DataMonitor", _Modes)
    runner.continual(out_dir=str(tmp_path / "full"), replay_cache=cache, **COMMON)
    # every step of every task: student training, teacher frozen
    assert _Modes.seen and all(student and teacher is False for _, student, teacher in _Modes.seen)
    reference = _weights(tmp_path / "full")
    bn_buffers = [k for k in reference if k.endswith(("running_mean", "running_var"))]
    assert bn_buffers  # the toy model has BatchNorm

    # a task boundary: the first call stops after task 0, the second starts task 1 from model.pt
    runner.continual(out_dir=str(tmp_path / "boundary"), replay_cache=cache, max_tasks=1, **COMMON)
    runner.continual(out_dir=str(tmp_path / "boundary"), replay_cache=cache, **COMMON)

    # mid-task: killed in task 1 after its step-1 checkpoint, restarted from that checkpoint
    class Crash(_Modes):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2 and "task01" in str(trainer.default_root_dir):
                raise RuntimeError("simulated kill")
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(runner, "DataMonitor", Crash)
    with pytest.raises(RuntimeError, match="simulated kill"):
        runner.continual(out_dir=str(tmp_path / "mid"), replay_cache=cache, **COMMON)
    monkeypatch.setattr(runner, "DataMonitor", _Modes)
    runner.continual(out_dir=str(tmp_path / "mid"), replay_cache=cache, **COMMON)

    for name in ("boundary", "mid"):
        got = _weights(tmp_path / name)
        differ = [k for k in reference if not torch.equal(reference[k], got[k])]
        assert not differ, f"{name}: {len(differ)} of {len(reference)} tensors differ, e.g. {differ[:3]}"
