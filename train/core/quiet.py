"""Start-of-run messages that say something: a one-line model summary and a precise train/eval check.

Lightning's stock model summary prints a table whose ``FLOPs`` column is 0 for every model without an
``example_input_array`` (all of ours: their inputs come from the stream), and it warns about every
module in eval mode at the start of training, which in our recipes is mostly on purpose (a frozen
teacher, a frozen CLIP tower). These replace both (``synthloop fit`` installs them; the stock warning is
dropped in :data:`train.cli.EXPECTED_NOISE`):

* :class:`CompactModelSummary`: ``model: CLIPPretrain, 1.2 M parameters (1.2 M trainable, 4.8 MB)``;
* :class:`TrainModeCheck`: warns, naming them, only about modules in eval mode that hold trainable
  parameters when training starts: there, eval mode changes what is trained (frozen BatchNorm
  statistics, disabled dropout), and it is almost always a hand-off that forgot ``train()``.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import get_human_readable_count

log = logging.getLogger(__name__)


class CompactModelSummary(ModelSummary):
    """One log line instead of Lightning's table (rank 0)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        params = list(pl_module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
        log.info("model: %s, %s parameters (%s trainable, %.1f MB)", type(pl_module).__name__,
                 get_human_readable_count(total), get_human_readable_count(trainable), size_mb)


class TrainModeCheck(pl.Callback):
    """At the start of training, warn about modules in eval mode that have trainable parameters."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        suspicious = [name for name, m in pl_module.named_modules()
                      if not m.training and any(p.requires_grad for p in m.parameters(recurse=False))]
        if suspicious:
            shown = ", ".join(suspicious[:5]) + (f" and {len(suspicious) - 5} more" if len(suspicious) > 5 else "")
            log.warning("%d module(s) with trainable parameters are in eval mode at the start of training (%s): "
                        "BatchNorm statistics are frozen and dropout is off for them; call .train() on them if "
                        "that is not intended", len(suspicious), shown)


def hygiene_callbacks(existing: list[pl.Callback], enable_model_summary: bool | None) -> tuple[list[pl.Callback], bool]:
    """The callbacks above (unless the config has its own summary) and the Trainer's ``enable_model_summary``."""
    out: list[pl.Callback] = []
    if not any(isinstance(cb, TrainModeCheck) for cb in existing):
        out.append(TrainModeCheck())
    has_summary = any(isinstance(cb, ModelSummary) for cb in existing)
    if enable_model_summary is not False and not has_summary:
        out.append(CompactModelSummary())
    return out, (enable_model_summary if enable_model_summary is not None else True)
