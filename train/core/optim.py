"""The one optimizer / LR-schedule builder of every recipe: AdamW, linear warm-up, cosine decay.

Warm-up is always given in **optimizer steps** (``warmup_steps``). The schedule multiplies the peak LR by

* ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step already trains), then
* ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup) / (total - warmup)``
  clipped to [0, 1] (cosine to ``min_ratio`` x peak at ``total_steps``).

Parameter groups may carry their own ``lr`` (a multiple of the peak) and ``weight_decay``; the schedule
scales every group's LR by the same factor. Returned in the form Lightning's ``configure_optimizers``
takes, stepped every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["build_optimizer", "no_decay_groups", "warmup_cosine"]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def no_decay_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: weight decay on matrices, none on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for n, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable[Any], *, lr: float, total_steps: int | None, warmup_steps: int,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    min_lr_ratio: float = 0.0, owner: str = "model") -> dict:
    """AdamW over ``params`` (tensors or groups) + the warm-up/cosine schedule, as Lightning wants it.

    Raises a one-line ``ValueError`` naming ``owner`` when ``total_steps`` is unset (an online stream is
    endless, so the schedule needs ``trainer.max_steps`` or the module's ``total_steps``).
    """
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"{owner}: set trainer.max_steps (or the module's total_steps): the stream is endless, "
                         "so the LR schedule needs a length")
    if warmup_steps < 0:
        raise ValueError(f"{owner}: warmup_steps must be >= 0, got {warmup_steps}")
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    warmup, total = int(warmup_steps), int(total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
