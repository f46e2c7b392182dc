"""Failure handling for every recipe: non-finite losses, atomic checkpoints, resume, dying ranks.

* **Non-finite loss** (:class:`NonFiniteGuard`, :func:`guard_loss`, :func:`all_finite`,
  :func:`record_step`): a step whose loss is NaN/inf on *any* rank is skipped on *every* rank (the
  decision is all-reduced, so DDP/DeepSpeed ranks never disagree about running a backward), counted
  (``train/nonfinite_steps``) and, after ``max_consecutive`` such steps in a row, the run stops with
  :class:`NonFiniteLossError` naming the step and the count. Automatic optimisation: ``return
  guard_loss(self, loss)`` from ``training_step`` (see there for how the update is dropped under DDP and
  DeepSpeed). Manual optimisation: check with :func:`all_finite` before each backward (skip the backward
  and the step on every rank when it says no), call :func:`record_step` once per step.
* **Checkpoints** (:mod:`train.core.checkpoints`, re-exported here): atomic writes
  (:class:`AtomicModelCheckpoint`, :class:`AtomicCheckpointIO`), validity (:func:`checkpoint_problem`)
  and the one resume rule (:func:`latest_checkpoint` / :func:`find_resume_checkpoint`: the highest
  ``global_step`` among complete checkpoints, then the newest; torn and partial ones skipped).
* **Collective timeout / dying ranks**: see :mod:`train.core.strategies` (``--collective_timeout``,
  ``$SYNTHLOOP_COLLECTIVE_TIMEOUT_S``). :class:`FaultInjection` makes a rank die or hang at a step
  (``SYNTHLOOP_TEST_DIE_AT_STEP``, ``SYNTHLOOP_TEST_HANG_AT_STEP``, ``SYNTHLOOP_TEST_FAULT_RANK``), for tests.
* :class:`StepTrace` appends ``{"step", "loss"}`` per optimizer step to a JSONL file
  (``$SYNTHLOOP_TRACE``) for the kill-and-resume equivalence tests.

:func:`default_callbacks` and :func:`harden_trainer` apply all of this to a Trainer (``synthloop fit``
and ``synthloop continual`` do it for every run).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from models.errors import RunAborted, UserError, env_int
# checkpoint writing, validity and the resume rule live in train.core.checkpoints; re-exported here
from train.core.checkpoints import (OLD, PARTIAL, AtomicCheckpointIO, AtomicModelCheckpoint,  # noqa: F401
                                    checkpoint_problem, checkpoint_step, commit, find_resume_checkpoint,
                                    harden_trainer, latest_checkpoint, partial_path, valid_checkpoint)
from train.core.resume import apply_resume_auto  # noqa: F401

log = logging.getLogger(__name__)

MAX_NONFINITE_ENV = "SYNTHLOOP_MAX_NONFINITE"
#: Consecutive non-finite-loss steps that stop a run (:class:`NonFiniteGuard`); ``$SYNTHLOOP_MAX_NONFINITE``
#: overrides it for every run, ``NonFiniteGuard(max_consecutive=...)`` in a config for one; ``0`` never stops.
DEFAULT_MAX_NONFINITE = 25
TRACE_ENV = "SYNTHLOOP_TRACE"


# -- non-finite losses ----------------------------------------------------------------------------
class NonFiniteLossError(RunAborted):
    """Raised after ``max_consecutive`` training steps in a row had a non-finite loss: a
    :class:`models.errors.RunAborted` (``synthloop`` prints its one line and exits 3; the checkpoints
    written so far are kept)."""


class NonFiniteGuard(pl.Callback):
    """Counts skipped non-finite steps and stops the run after ``max_consecutive`` of them in a row.

    Args:
        max_consecutive: consecutive skipped steps that stop the run (default: ``$SYNTHLOOP_MAX_NONFINITE``
            when set, else :data:`DEFAULT_MAX_NONFINITE` = 25). ``0`` disables stopping (steps are still
            skipped). In a config: ``trainer.callbacks: [{class_path: train.core.resilience.NonFiniteGuard,
            init_args: {max_consecutive: 50}}]``.
    """

    def __init__(self, max_consecutive: int | None = None) -> None:
        if max_consecutive is None:  # a bad value is a one-line UserError naming the variable
            max_consecutive = env_int(MAX_NONFINITE_ENV, DEFAULT_MAX_NONFINITE, minimum=0)
        elif isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 0:
            raise UserError(f"NonFiniteGuard.max_consecutive: must be an integer >= 0 (0 = never stop), got "
                            f"{max_consecutive!r}")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0
        self.skip_pending = False  # set by guard_loss: drop this step's gradients before the optimizer step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        """After the backward (gradients synchronised), before ``optimizer.step()``: a flagged step loses all
        its gradients (``grad = None``), so torch optimizers leave every parameter and their state untouched."""
        if self.skip_pending:
            self.skip_pending = False
            optimizer.zero_grad(set_to_none=True)

    def record(self, module: pl.LightningModule, skipped: bool, value: Any = None) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        step = module.trainer.global_step if module._trainer is not None else -1
        log.warning("non-finite loss (%s) at step %d: step skipped (%d in a row, %d in all)", value, step,
                    self.consecutive, self.total)
        if module._trainer is not None:
            module.log("train/nonfinite_steps", float(self.total), on_step=True, on_epoch=False)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive training steps had a non-finite loss "
                f"(last value {value}, at global step {step}; {self.total} skipped in all). Lower the learning "
                f"rate, check the data, or raise the limit ({MAX_NONFINITE_ENV} / NonFiniteGuard(max_consecutive))")

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = int(state_dict.get("total", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


def _guard(module: pl.LightningModule) -> NonFiniteGuard:
    trainer = module._trainer
    if trainer is not None:
        for cb in trainer.callbacks:
            if isinstance(cb, NonFiniteGuard):
                return cb
        guard = NonFiniteGuard()  # none configured (a bare Trainer): attach a default one
        trainer.callbacks.append(guard)
        return guard
    guard = getattr(module, "_nonfinite_guard", None)
    if guard is None:  # outside a Trainer (tests, notebooks)
        guard = module._nonfinite_guard = NonFiniteGuard()
    return guard


def all_finite(module: pl.LightningModule, *values: torch.Tensor) -> bool:
    """Whether every value is finite on *every* rank (one all-reduce when distributed)."""
    local = all(bool(torch.isfinite(v.detach()).all()) for v in values if v is not None)
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(local, all=True))
    return local


def record_step(module: pl.LightningModule, skipped: bool, value: Any = None) -> None:
    """Count a (skipped or not) step; raises :class:`NonFiniteLossError` after too many in a row."""
    _guard(module).record(module, skipped, value)


def guard_loss(module: pl.LightningModule, loss: torch.Tensor) -> torch.Tensor:
    """For automatic optimisation: ``return guard_loss(self, loss)`` at the end of ``training_step``.

    Returns ``loss`` unchanged when it is finite on every rank. Otherwise the step is skipped on every
    rank and counted. Lightning refuses a ``None`` loss in distributed runs, so the backward still runs
    (every rank, collectives stay matched) and the update is dropped afterwards: DDP / one process:
    :meth:`NonFiniteGuard.on_before_optimizer_step` sets every gradient to None, so the optimizer step
    changes no parameter and no optimizer state; DeepSpeed: the loss is made NaN, and DeepSpeed's own
    non-finite gradient check ("OVERFLOW! Skipping step") discards the step. The step counter and the
    LR schedule advance as for any step.
    """
    ok = all_finite(module, loss)
    guard = _guard(module)
    guard.record(module, not ok, None if ok else float(loss.detach().float().mean()))
    if ok or module._trainer is None:
        return loss
    from train.core.strategies import is_deepspeed

    if is_deepspeed(module.trainer.strategy):
        return loss * float("nan")  # NaN gradients on every rank, even where this rank's loss was finite
    guard.skip_pending = True
    return loss


# -- test hooks and traces ------------------------------------------------------------------------
class FaultInjection(pl.Callback):
    """For tests: rank ``rank`` exits (``os._exit(1)``) or hangs when training reaches ``die_at_step`` /
    ``hang_at_step``; at the (0-based) batches in ``nan_at_batches`` every floating-point tensor of the
    batch is filled with NaN on every rank (a non-finite loss). Defaults from ``SYNTHLOOP_TEST_DIE_AT_STEP``,
    ``SYNTHLOOP_TEST_HANG_AT_STEP``, ``SYNTHLOOP_TEST_FAULT_RANK`` (default 1), ``SYNTHLOOP_TEST_NAN_AT_BATCHES``
    (comma-separated)."""

    def __init__(self, die_at_step: int | None = None, hang_at_step: int | None = None,
                 rank: int | None = None, nan_at_batches: list[int] | None = None) -> None:
        env = os.environ.get
        self.die_at_step = die_at_step if die_at_step is not None else _int_or_none(env("SYNTHLOOP_TEST_DIE_AT_STEP"))
        self.hang_at_step = (hang_at_step if hang_at_step is not None
                             else _int_or_none(env("SYNTHLOOP_TEST_HANG_AT_STEP")))
        self.rank = rank if rank is not None else int(env("SYNTHLOOP_TEST_FAULT_RANK", "1"))
        if nan_at_batches is None:
            nan_at_batches = [int(x) for x in env("SYNTHLOOP_TEST_NAN_AT_BATCHES", "").split(",") if x.strip()]
        self.nan_at_batches = set(nan_at_batches)
        self._batches = 0

    @staticmethod
    def from_env() -> FaultInjection | None:
        cb = FaultInjection()
        active = cb.die_at_step is not None or cb.hang_at_step is not None or cb.nan_at_batches
        return cb if active else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        dm = trainer.datamodule
        n = dm.batches - 1 if dm is not None and hasattr(dm, "batches") else self._batches  # survives a resume
        self._batches += 1
        if n in self.nan_at_batches and isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.fill_(float("nan"))
        if trainer.global_rank != self.rank:
            return
        if self.die_at_step is not None and trainer.global_step >= self.die_at_step:
            print(f"FaultInjection: rank {trainer.global_rank} dies at step {trainer.global_step}", flush=True)
            os._exit(1)
        if self.hang_at_step is not None and trainer.global_step >= self.hang_at_step:
            print(f"FaultInjection: rank {trainer.global_rank} hangs at step {trainer.global_step}", flush=True)
            # the launcher's SIGTERM ends a hung rank at once (the default action) rather than after torchrun's
            # 30-s grace and SIGKILL: the preemption handler would only note it for a step boundary never reached
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            while True:
                time.sleep(3600)


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


class StepTrace(pl.Callback):
    """Appends ``{"run", "step", "batch", "loss"}`` per training batch to a JSONL file (rank 0); ``run`` is
    the name of ``trainer.default_root_dir`` (one per task in ``synthloop continual``), ``loss`` the value
    logged under ``key`` at this step.

    A resumed run appends again from its checkpoint's step on; readers keep the last record of each
    (run, step) (:func:`read_trace`).
    """

    def __init__(self, path: str | None = None, key: str = "train/loss") -> None:
        self.path = path or os.environ[TRACE_ENV]
        self.key = key

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and os.path.exists(self.path):  # a record cut by a kill: end its line
            with open(self.path, "rb+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    f.write(b"\n")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.key)
        record = {"run": Path(trainer.default_root_dir).name, "step": int(trainer.global_step),
                  "batch": int(batch_idx), "loss": None if value is None else float(value)}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_trace(path: str | os.PathLike) -> dict[tuple[str, int], float | None]:
    """(run, step) -> loss from a :class:`StepTrace` file; a step written twice (before a kill and after
    the resume) keeps its last value. A line cut by a kill is ignored."""
    out: dict[tuple[str, int], float | None] = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out[(rec.get("run", ""), int(rec["step"]))] = rec["loss"]
    return out


# -- applying it all ------------------------------------------------------------------------------
def default_callbacks(existing: list[pl.Callback] | None = None) -> list[pl.Callback]:
    """Callbacks every synthloop run gets unless already configured: :class:`NonFiniteGuard`,
    :class:`train.core.preemption.SignalCheckpoint` (SIGTERM: checkpoint, exit 143), plus
    :class:`FaultInjection` / :class:`StepTrace` when their environment variables are set."""
    existing = list(existing or [])
    out: list[pl.Callback] = []
    if not any(isinstance(cb, NonFiniteGuard) for cb in existing):
        out.append(NonFiniteGuard())
    from train.core.preemption import SignalCheckpoint

    if not any(isinstance(cb, SignalCheckpoint) for cb in existing):
        out.append(SignalCheckpoint())
    fault = FaultInjection.from_env()
    if fault is not None and not any(isinstance(cb, FaultInjection) for cb in existing):
        out.append(fault)
    if os.environ.get(TRACE_ENV) and not any(isinstance(cb, StepTrace) for cb in existing):
        out.append(StepTrace())
    return out
