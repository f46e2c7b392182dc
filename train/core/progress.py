"""Progress a person can follow: a step bar in a terminal, periodic log lines everywhere else.

Lightning's bar counts epochs and batches of an epoch; an online stream has one endless epoch, so the
stock bar reads ``Epoch 0/-2`` with no total, and when output goes to a file (SLURM, ``nohup``, CI) it
is written once, at the end. Every ``synthloop`` run therefore gets (:func:`progress_callbacks`):

* in a terminal, :class:`StepProgressBar`: ``train`` with ``global_step / max_steps``;
* otherwise, :class:`ProgressLog`: one line every ``every_s`` seconds (and at the first and last
  step), the way open_clip's trainer logs::

      step 120/400 (30%) | loss 2.7321 | 41.8 samples/s | data wait 1.2% | elapsed 2m51s | ETA 6m39s

``enable_progress_bar: false`` in a config (or ``--trainer.enable_progress_bar=false``) means no bar: the
log lines then appear in a terminal too.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

log = logging.getLogger("train.progress")


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _loss(outputs: Any, trainer: pl.Trainer) -> float | None:
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if value is None:
        value = trainer.callback_metrics.get("train/loss")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, dict):
        for v in batch.values():
            if hasattr(v, "shape") and len(v.shape) > 0:
                return int(v.shape[0])
            if isinstance(v, (list, tuple)):
                return len(v)
    if isinstance(batch, (list, tuple)) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    return None


class ProgressLog(pl.Callback):
    """One log line of progress every ``every_s`` seconds of training (rank 0), plus the first and last
    step: step / max_steps, loss, samples/s (all ranks), the data-wait fraction (from
    :class:`train.core.callbacks.DataMonitor` when present), elapsed time and ETA."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._t0: float | None = None
        self._step0 = 0
        self._last = 0.0
        self._samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._step0 = trainer.global_step
        self._last = 0.0
        self._samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = _batch_size(batch)
        if n is not None:
            self._samples += n * trainer.world_size
        if not trainer.is_global_zero or self._t0 is None:
            return
        now = time.perf_counter() - self._t0
        step, total = trainer.global_step, trainer.max_steps
        last = total is not None and total > 0 and step >= total
        if not (step - self._step0 == 1 or last or now - self._last >= self.every_s):
            return
        self._last = now
        log.info(self.line(trainer, outputs, now))

    def line(self, trainer: pl.Trainer, outputs: Any, elapsed: float) -> str:
        step, total = trainer.global_step, trainer.max_steps
        done = step - self._step0
        parts = [f"step {step}/{total} ({100.0 * step / total:.0f}%)" if total and total > 0 else f"step {step}"]
        loss = _loss(outputs, trainer)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if elapsed > 0 and self._samples:
            parts.append(f"{self._samples / elapsed:.1f} samples/s")
        monitor = next((cb for cb in trainer.callbacks if type(cb).__name__ == "DataMonitor"), None)
        frac = getattr(monitor, "wait_fraction", float("nan"))
        if math.isfinite(frac):
            parts.append(f"data wait {100.0 * frac:.1f}%")
        parts.append(f"elapsed {_fmt_s(elapsed)}")
        if total and total > 0 and done > 0:
            parts.append(f"ETA {_fmt_s(elapsed / done * (total - step))}")
        return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps towards ``max_steps`` (not batches of an epoch)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.train_progress_bar.reset(total=total)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if trainer.global_step != bar.n and (trainer.global_step % self.refresh_rate == 0 or
                                             trainer.global_step == trainer.max_steps):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()


def is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_callbacks(existing: list[pl.Callback], enable_progress_bar: bool | None) -> tuple[list[pl.Callback], bool]:
    """The progress callbacks a run gets, and the ``enable_progress_bar`` value for the Trainer.

    A terminal gets the step bar; a file, or a run whose config turned the bar off, gets the log lines
    (they go through logging: ``SYNTHLOOP_LOG=WARNING`` silences them). Nothing is added when the config
    has its own bar or :class:`ProgressLog`.
    """
    if any(isinstance(cb, (ProgressLog, pl.callbacks.ProgressBar)) for cb in existing):
        return [], enable_progress_bar if enable_progress_bar is not None else True
    if enable_progress_bar is not False and is_terminal():
        return [StepProgressBar()], True
    return [ProgressLog()], False
