"""Train/eval modes at hand-offs: an evaluation never changes the mode training continues in.

``module.eval()`` followed by ``module.train(was_training)`` is not a restore: it sets every submodule to
one flag, so a submodule that was deliberately in eval mode (a frozen BatchNorm tower, a teacher) comes
back training. :func:`eval_mode` records each submodule's flag and puts every one back.

The hand-offs of the GIFT runner (``docs/gift.md``, "Train and eval modes"): the zero-shot evaluations
run inside :func:`eval_mode`; each task's training starts with the student in train mode and the teacher
in eval mode (``GIFTTask.on_train_start``), on every rank and whether the task starts fresh or from a
checkpoint, so an uninterrupted sequence and a resumed one train the same model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode inside the block; every submodule's own mode restored after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def batchnorm_frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every BatchNorm layer of ``module`` in eval mode inside the block (normalise with the running
    statistics and leave them unchanged; gradients still flow); the other layers keep their mode."""
    bns = [(m, m.training) for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m, _ in bns:
        m.eval()
    try:
        yield module
    finally:
        for m, training in bns:
            m.training = training


def modes_summary(module: torch.nn.Module) -> dict[str, int]:
    """``{"train": n, "eval": n}`` over all submodules (for logs and tests)."""
    flags = [m.training for m in module.modules()]
    return {"train": sum(flags), "eval": len(flags) - sum(flags)}
