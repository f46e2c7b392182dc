"""Failure handling for every recipe: non-finite losses, atomic checkpoints, resume, dying ranks.

* **Non-finite loss** (:class:`NonFiniteGuard`, :func:`guard_loss`, :func:`all_finite`,
  :func:`record_step`): a step whose loss is NaN/inf on *any* rank is skipped on *every* rank (the
  decision is all-reduced, so DDP/DeepSpeed ranks never disagree about running a backward), counted
  (``train/nonfinite_steps``) and, after ``max_consecutive`` such steps in a row, the run stops with
  :class:`NonFiniteLossError` naming the step and the count. Automatic optimisation: ``return
  guard_loss(self, loss)`` from ``training_step`` (see there for how the update is dropped under DDP and
  DeepSpeed). Manual optimisation: check with :func:`all_finite` before each backward (skip the backward
  and the step on every rank when it says no), call :func:`record_step` once per step.
* **Atomic checkpoints** (:class:`AtomicModelCheckpoint`, :class:`AtomicCheckpointIO`): a checkpoint is
  written under a temporary name in its own directory and renamed into place (``os.replace``; DeepSpeed's
  checkpoint *directories* are swapped in with two renames), so a kill at any moment leaves either the
  previous checkpoint or the new one, never a torn one. Loading uses ``torch.load(weights_only=True)``
  and fails with a message naming the file when it is unreadable.
* **Resume** (:func:`find_resume_checkpoint`, :func:`valid_checkpoint`): the newest checkpoint in a
  directory that passes a structural check (``last*.ckpt`` first); torn or partial ones are skipped with
  a warning naming them, temporary files are never candidates.
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
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

MAX_NONFINITE_ENV = "SYNTHLOOP_MAX_NONFINITE"
DEFAULT_MAX_NONFINITE = 25
TRACE_ENV = "SYNTHLOOP_TRACE"
PARTIAL = ".partial"  # suffix of a checkpoint being written (hidden: ".<name>.partial")
OLD = ".old"  # suffix of a replaced DeepSpeed checkpoint directory during the swap


# -- non-finite losses ----------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """Raised after ``max_consecutive`` training steps in a row had a non-finite loss."""


class NonFiniteGuard(pl.Callback):
    """Counts skipped non-finite steps and stops the run after ``max_consecutive`` of them in a row.

    Args:
        max_consecutive: consecutive skipped steps that stop the run (default
            ``$SYNTHLOOP_MAX_NONFINITE`` or 25). ``0`` disables stopping (steps are still skipped).
    """

    def __init__(self, max_consecutive: int | None = None) -> None:
        if max_consecutive is None:
            max_consecutive = int(os.environ.get(MAX_NONFINITE_ENV, DEFAULT_MAX_NONFINITE))
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
                f"synthloop: stopping: {self.consecutive} consecutive training steps had a non-finite loss "
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


# -- checkpoints ----------------------------------------------------------------------------------
from datagen.shards import _fsync_dir  # noqa: E402  (one durable-rename helper for shards and checkpoints)


def partial_path(path: str | os.PathLike) -> str:
    """Where a checkpoint is written before it is renamed to ``path`` (same directory, hidden name)."""
    p = Path(path)
    return str(p.with_name(f".{p.name}{PARTIAL}"))


def _remove(path: str | os.PathLike) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a fully written checkpoint (file or DeepSpeed directory) from ``tmp`` to ``path``."""
    tmp, path = os.fspath(tmp), os.fspath(path)
    if os.path.isdir(tmp) and os.path.lexists(path):
        old = str(Path(path).with_name(f".{Path(path).name}{OLD}"))
        _remove(old)
        os.rename(path, old)  # a crash between the two renames leaves `old`, a complete checkpoint
        os.rename(tmp, path)
        _remove(old)
    else:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file in the target's directory, fsync, ``os.replace``; safe loading.

    Lightning's own save goes through an fsspec transaction whose temp file lives in the system temp
    directory: when that is another filesystem the final move is a copy, which a kill can tear.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{partial_path(path)}-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            commit(tmp, path)
        except BaseException:
            _remove(tmp)
            raise

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise RuntimeError(f"synthloop: checkpoint {path} is unreadable ({problem}); it is truncated or "
                               "corrupt: delete it or resume from another checkpoint")
        try:
            return torch.load(path, map_location=map_location or "cpu",
                              weights_only=True if weights_only is None else weights_only)
        except Exception as exc:
            raise RuntimeError(f"synthloop: cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose every save (files, DeepSpeed directories) is written aside, then renamed.

    All ranks write into ``.<name>.partial`` (DeepSpeed shards each rank's part there), meet at a
    barrier, and rank 0 renames it into place. Its state key is the stock one, so checkpoints stay
    interchangeable with plain ``ModelCheckpoint`` runs.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        from weakref import proxy

        tmp = partial_path(filepath)
        if trainer.is_global_zero:
            _remove(tmp)
        trainer.strategy.barrier("synthloop_ckpt_start")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("synthloop_ckpt_written")
        if trainer.is_global_zero:
            commit(tmp, filepath)
        trainer.strategy.barrier("synthloop_ckpt_committed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def _zip_problem(path: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a complete torch.save archive: {exc}"
    if not any(n.endswith("data.pkl") for n in names):
        return "archive without data.pkl"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` looks like a complete checkpoint (file or DeepSpeed directory), else why not.

    A structural check (zip central directory present, DeepSpeed ``latest`` tag and its shards), not a
    full load: cheap enough to run on every candidate at start-up.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            return "empty file"
        return _zip_problem(path)
    if os.path.isdir(path):
        latest = Path(path) / "latest"
        if not latest.is_file():
            return "DeepSpeed checkpoint directory without a `latest` tag"
        tag_dir = Path(path) / latest.read_text().strip()
        shards = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
        if not any("model_states" in s.name for s in shards):
            return f"DeepSpeed checkpoint directory without model states in {tag_dir.name}/"
        for shard in shards:
            problem = _zip_problem(str(shard))
            if problem is not None:
                return f"{shard.name}: {problem}"
        return None
    return "does not exist"


def valid_checkpoint(path: str | os.PathLike) -> bool:
    return checkpoint_problem(path) is None


def find_resume_checkpoint(*dirs: str | os.PathLike) -> str | None:
    """The checkpoint to resume from in ``dirs``: the newest complete ``last*.ckpt``, else the newest
    complete ``*.ckpt``, else a DeepSpeed directory left by an interrupted swap; ``None`` if none.
    Torn or partial checkpoints are skipped with a warning naming them."""
    lasts, others, olds = [], [], []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(".ckpt" + OLD):
                olds.append(p)
            elif p.name.startswith("."):
                continue  # a checkpoint being written
            elif p.suffix == ".ckpt":
                (lasts if p.name.startswith("last") else others).append(p)

    def newest_first(paths: list[Path]) -> list[Path]:
        return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)

    for p in newest_first(lasts) + newest_first(others) + newest_first(olds):
        problem = checkpoint_problem(p)
        if problem is None:
            return str(p)
        log.warning("skipping checkpoint %s: %s", p, problem)
    return None


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
    """Callbacks every synthloop run gets unless already configured: :class:`NonFiniteGuard`, plus
    :class:`FaultInjection` / :class:`StepTrace` when their environment variables are set."""
    existing = list(existing or [])
    out: list[pl.Callback] = []
    if not any(isinstance(cb, NonFiniteGuard) for cb in existing):
        out.append(NonFiniteGuard())
    fault = FaultInjection.from_env()
    if fault is not None and not any(isinstance(cb, FaultInjection) for cb in existing):
        out.append(fault)
    if os.environ.get(TRACE_ENV) and not any(isinstance(cb, StepTrace) for cb in existing):
        out.append(StepTrace())
    return out


def harden_trainer(trainer: pl.Trainer) -> pl.Trainer:
    """Atomic checkpoint writes and safe loading for a constructed Trainer (before ``fit``).

    Plain ``ModelCheckpoint`` callbacks become :class:`AtomicModelCheckpoint` (a subclass that only
    changes how the file is written), and the strategy's default ``TorchCheckpointIO`` becomes
    :class:`AtomicCheckpointIO`.
    """
    for cb in trainer.callbacks:
        if type(cb) is ModelCheckpoint:
            cb.__class__ = AtomicModelCheckpoint
    strategy = trainer.strategy
    io = getattr(strategy, "_checkpoint_io", None)
    if io is None or type(io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def _cfg_get(ns: Any, key: str, default: Any = None) -> Any:
    cur = ns
    for part in key.split("."):
        if cur is None:
            return default
        cur = cur.get(part, None) if hasattr(cur, "get") else getattr(cur, part, None)
    return default if cur is None else cur


def apply_resume_auto(cfg: Any) -> str | None:
    """``--resume auto`` for ``synthloop fit``: point ``ckpt_path`` at the run's newest complete checkpoint.

    Looks in the ``dirpath`` of configured ``ModelCheckpoint`` callbacks, else in
    ``<logger save_dir>/<name>/version_*/checkpoints`` (newest version first) or
    ``<default_root_dir>/checkpoints``; when found under a logger version, the logger is pinned to that
    version so the resumed run keeps writing into the same run directory. ``cfg`` is the subcommand's
    (jsonargparse) config; returns the checkpoint or None (a fresh run). An explicit ``ckpt_path`` wins.
    """
    if cfg.get("ckpt_path"):
        return cfg.get("ckpt_path")
    root_dir = Path(_cfg_get(cfg, "trainer.default_root_dir") or os.getcwd())
    dirs = [d for cb in (_cfg_get(cfg, "trainer.callbacks") or [])
            if str(_cfg_get(cb, "class_path", "")).endswith("ModelCheckpoint")
            and (d := _cfg_get(cb, "init_args.dirpath"))]
    if dirs:
        found = find_resume_checkpoint(*dirs)
        if found:
            cfg["ckpt_path"] = found
        return found
    logger = _cfg_get(cfg, "trainer.logger")
    first = logger[0] if isinstance(logger, list) and logger else logger
    if first is False:
        found = find_resume_checkpoint(root_dir / "checkpoints")
    else:
        args = _cfg_get(first, "init_args") if first is not None and first is not True else None
        save_dir = Path(_cfg_get(args, "save_dir") or root_dir)
        name = _cfg_get(args, "name", "lightning_logs") if args is not None else "lightning_logs"
        base = save_dir / name if name else save_dir
        version = _cfg_get(args, "version")
        if version is not None:
            vdirs = [base / (version if isinstance(version, str) else f"version_{version}")]
        else:
            def number(p: Path) -> int:
                tail = p.name.split("_", 1)[-1]
                return int(tail) if tail.isdigit() else -1

            vdirs = sorted(base.glob("version_*"), key=number, reverse=True) if base.is_dir() else []
        found = None
        for vdir in vdirs:
            found = find_resume_checkpoint(vdir / "checkpoints")
            if found:
                if version is None and args is not None:
                    tail = vdir.name.split("_", 1)[-1]
                    args["version"] = int(tail) if tail.isdigit() else vdir.name
                break
    if found:
        cfg["ckpt_path"] = found
        log.info("resuming from %s", found)
    return found
