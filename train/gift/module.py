"""One task of continual CLIP fine-tuning: GIFT and the baselines that share its loop.

Per step (``docs/specs/gift.md``), in this gradient order:

1. synthetic branch: student and frozen teacher logits over the B synthetic pairs;
   ``L_syn = L_CD (T=2) + beta * L_ITA``; backward;
2. AWC importance from the gradients now in ``.grad`` (``F = g^2 / mean(g^2)`` per tensor), held constant;
3. ``L_task + L_AWC`` (and LwF's distillation for that baseline); backward *on top of* the synthetic
   gradients (no zeroing in between); one AdamW step.

Methods (``method``): ``finetune`` (task loss only), ``l2`` (F = 1), ``lwf`` (distil the teacher on the
task images), ``ewc`` (F: a diagonal Fisher of the previous task from many of its images, computed by
the runner before the task, then fixed: :mod:`train.gift.fisher`), and GIFT's ablations ``cd``, ``cd_ita``,
``gift`` (= CD + ITA + AWC).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytorch_lightning as pl
import torch

from train.core.modes import batchnorm_frozen
from train.core.optim import build_optimizer
from train.core.resilience import all_finite, record_step
from train.core.strategies import is_deepspeed
from train.gift.losses import (awc_importance, awc_penalty, clip_logits, contrastive_distillation,
                        image_text_alignment, l2_importance, lwf_distillation, task_loss)


#: How the student's BatchNorm layers treat the replay images (``replay_bn``): "batch" (train mode, like
#: every other forward) or "frozen" (normalised with the task images' running statistics, which they
#: leave unchanged). docs/gift.md, "Train and eval modes".
REPLAY_BN = ("batch", "frozen")

METHODS = {
    # method: (contrastive distillation, ITA, weight consolidation, LwF)
    "finetune": (False, False, None, False),
    "l2": (False, False, "l2", False),
    "lwf": (False, False, None, True),
    "ewc": (False, False, "ewc", False),
    "cd": (True, False, None, False),
    "cd_ita": (True, True, None, False),
    "gift": (True, True, "awc", False),
}


DEEPSPEED_REFUSAL = ("GIFT / continual fine-tuning does not run under DeepSpeed (its two backward passes per step "
                     "would lose the synthetic-branch gradient under ZeRO, and ZeRO-3 partitions parameters it reads "
                     "outside a forward; see GIFTTask.setup); use strategy=ddp")


def method_parts(method: str) -> tuple[bool, bool, str | None, bool]:
    if method not in METHODS:
        raise ValueError(f"unknown continual method {method!r}; valid: {', '.join(METHODS)}")
    return METHODS[method]


def uses_replay(method: str) -> bool:
    """Whether ``method`` needs a synthetic replay set (CD, ITA, or an importance from replay gradients)."""
    cd, ita, consolidation, _ = method_parts(method)
    return cd or ita or consolidation == "awc"


class GIFTTask(pl.LightningModule):
    """Fine-tunes ``student`` on one task; ``teacher`` and ``anchor`` are the end of the previous task.

    Args:
        student: the open_clip model being trained (both towers; logit scale frozen at 100).
        teacher: frozen copy of the previous task's model (None for methods that need none).
        tokenizer: the model's tokenizer.
        class_prompts: the task's classes in its first template ("a photo of a {c}.").
        method: see :data:`METHODS`.
        lr, warmup_steps, total_steps: fresh AdamW + linear warm-up + cosine to 0 per task (spec: 1e-5,
            100, 1000; 5e-5 for the hard tasks).
        weight_decay, betas: AdamW (spec: 0 and (0.9, 0.999)).
        temperature: CD temperature (spec 2).
        ita_weight: beta (spec 0.25).
        awc_lambda: lambda (spec 1).
        label_smoothing: task loss and ITA (spec 0.2).
        logit_scale: the fixed CLIP temperature of every loss (spec: 100, OpenAI CLIP's own learned value;
            the continual runner's ``logit_scale: model`` passes the starting checkpoint's value instead).
        importance: ``ewc``: the fixed importance F (:func:`train.gift.fisher.fisher_importance` of the
            previous task); None before the first task's end (no previous task: no penalty).
        ita_targets: ``"same_prompt"`` (spec: ITA's positives are the pairs with the same prompt) or
            ``"describes"`` (also every other prompt in the batch that truthfully describes the image;
            needs replay sets that record it, i.e. world-rendered ones; a toy diagnostic, not in the spec).
    """

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module | None, tokenizer, class_prompts: list[str],
                 method: str = "gift", lr: float = 1e-5, warmup_steps: int = 100, total_steps: int = 1000,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), temperature: float = 2.0,
                 ita_weight: float = 0.25, awc_lambda: float = 1.0, label_smoothing: float = 0.2,
                 logit_scale: float = 100.0, importance: dict[str, torch.Tensor] | None = None,
                 ita_targets: str = "same_prompt", replay_bn: str = "batch") -> None:
        super().__init__()
        if ita_targets not in ("same_prompt", "describes"):
            raise ValueError(f"ita_targets must be 'same_prompt' or 'describes', got {ita_targets!r}")
        if replay_bn not in REPLAY_BN:
            raise ValueError(f"replay_bn must be one of {REPLAY_BN}, got {replay_bn!r}")
        self.ita_targets, self.replay_bn = ita_targets, replay_bn
        self.automatic_optimization = False
        self.model = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.register_buffer("class_tokens", tokenizer(class_prompts), persistent=False)
        self.cd, self.ita, self.consolidation, self.lwf = method_parts(method)
        if (self.cd or self.lwf) and teacher is None:
            raise ValueError(f"method {method!r} needs the previous model as teacher")
        self.method = method
        self.lr, self.warmup_steps, self.total_steps = lr, warmup_steps, total_steps
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.temperature, self.ita_weight, self.awc_lambda = temperature, ita_weight, awc_lambda
        self.label_smoothing, self.scale = label_smoothing, logit_scale
        # anchor theta_{t-1}: the student's weights at the task start (= the teacher's)
        self.anchor = {n: p.detach().clone() for n, p in student.named_parameters()} if self.consolidation else {}
        self.static_importance: dict[str, torch.Tensor] | None = importance if self.consolidation == "ewc" else None
        student.logit_scale.requires_grad_(False)  # spec: frozen; the scale is 100 everywhere
        self.nonfinite_steps = 0

    # -- pieces ------------------------------------------------------------------------------------
    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _synthetic_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = self.tokenizer(batch["replay_txt"]).to(self.device)
        # frozen: replay images neither set nor update the student's BatchNorm statistics
        with batchnorm_frozen(self.model) if self.replay_bn == "frozen" else contextlib.nullcontext():
            s_img = self.model.encode_image(batch["replay_image"])
        s_txt = self.model.encode_text(tokens)
        student = clip_logits(s_img, s_txt, self.scale)
        loss = student.new_zeros(())
        if self.cd:
            with torch.no_grad():
                teacher = clip_logits(self.teacher.encode_image(batch["replay_image"]),
                                      self.teacher.encode_text(tokens), self.scale)
            cd = contrastive_distillation(student, teacher, self.temperature)
            self.log("train/cd", cd.detach())
            loss = loss + cd
        if self.ita:
            ita = image_text_alignment(student, batch["prompt_id"], self.label_smoothing, self._also_true(batch))
            self.log("train/ita", ita.detach())
            loss = loss + self.ita_weight * ita
        return loss

    def _also_true(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """``ita_targets: describes``: ``[i, j]`` = prompt j of the batch truthfully describes image i."""
        if self.ita_targets != "describes":
            return None
        hot = batch.get("replay_describes")
        if hot is None:
            raise ValueError("ita_targets='describes' needs replay sets that record which prompts describe each "
                             "image (world-rendered sets written by this version); this batch has none")
        return hot.bool()[:, batch["prompt_id"].to(hot.device)]

    # -- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # The modes are set here, not inherited: whatever ran before (an evaluation, a fresh build on
        # resume, another rank's history), the student trains in train mode (BatchNorm batch statistics,
        # as open_clip's trainer does) and the teacher stays in eval mode (fixed statistics).
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()

    def setup(self, stage: str) -> None:
        """Refuse DeepSpeed before any engine is built (DDP is the multi-process strategy for this module).

        The spec's gradient order (synthetic backward, read ``.grad`` for the AWC importance, task backward
        on top, one step) needs two backward passes accumulating into one step. Under DeepSpeed ZeRO each
        ``engine.backward`` at an accumulation boundary (gradient_accumulation_steps = 1) rebuilds the
        partitioned gradient from that backward alone, so the synthetic-branch gradient is silently dropped
        (measured with ZeRO-2: ``cd_ita`` ends with exactly the parameters of ``finetune``), and ``.grad`` is
        None after a backward. ZeRO-3 also partitions the parameters that the AWC/L2 penalty and open_clip's
        ``encode_text`` read outside a module forward.
        """
        if self._trainer is not None and is_deepspeed(self.trainer.strategy):
            raise ValueError(DEEPSPEED_REFUSAL)

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
        else:  # used outside a Trainer (tests, notebooks)
            loss.backward()

    def accumulate_gradients(self, batch: dict[str, Any]) -> torch.Tensor:
        """Both backward passes of one step, in the spec's order; returns the total loss (detached).

        After it, ``.grad`` holds grad(L_task + L_CD + beta L_ITA) + grad(L_AWC) with F held constant.
        A non-finite loss leaves the gradients zeroed and returns the non-finite value.
        """
        params = self._named_trainable()
        self.model.zero_grad(set_to_none=True)
        syn = None
        importance = None
        if self.cd or self.ita or self.consolidation == "awc":
            syn = self._synthetic_loss(batch)
            if not all_finite(self, syn):  # decided on every rank together: no rank is left waiting in a backward
                self.model.zero_grad(set_to_none=True)
                return torch.full_like(syn.detach(), float("nan"))
            if syn.requires_grad:
                self._backward(syn)
            if self.consolidation == "awc":
                importance = awc_importance({n: p.grad for n, p in params.items()}, params=params)
        if self.consolidation == "l2":
            importance = l2_importance(params)
        elif self.consolidation == "ewc":
            importance = self.static_importance

        image_features = self.model.encode_image(batch["image"])
        class_features = self.model.encode_text(self.class_tokens)
        loss = task_loss(image_features, class_features, batch["label"], self.scale, self.label_smoothing)
        self.log("train/task", loss.detach(), prog_bar=True)
        if self.lwf:
            with torch.no_grad():
                t_logits = clip_logits(self.teacher.encode_image(batch["image"]),
                                       self.teacher.encode_text(self.class_tokens), self.scale)
            lwf = lwf_distillation(clip_logits(image_features, class_features, self.scale), t_logits,
                                   self.temperature)
            self.log("train/lwf", lwf.detach())
            loss = loss + lwf
        if importance is not None:
            penalty = awc_penalty(params, {n: self.anchor[n] for n in params}, importance, self.awc_lambda)
            self.log("train/awc", penalty.detach())
            loss = loss + penalty
        total = loss.detach() + (syn.detach() if syn is not None else 0.0)
        if not all_finite(self, loss):  # decided on every rank together
            self.model.zero_grad(set_to_none=True)
            return torch.full_like(total, float("nan"))
        self._backward(loss)  # on top of the synthetic gradients: no zeroing in between
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        total = self.accumulate_gradients(batch)
        if not torch.isfinite(total):  # the same on every rank (accumulate_gradients decides collectively)
            self.nonfinite_steps += 1
            record_step(self, True, float(total))  # logs train/nonfinite_steps; stops after too many in a row
            return
        record_step(self, False)
        opt.step()
        sched.step()
        self.log("train/loss", total, prog_bar=True)

    def log(self, *args, **kwargs) -> None:
        if self._trainer is not None:
            super().log(*args, **kwargs)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return build_optimizer(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay,
                               warmup_steps=self.warmup_steps, total_steps=self.total_steps, owner="GIFTTask")

    # teacher and anchor are rebuilt from the previous task's weights on resume: keep checkpoints small
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
        if self.static_importance is not None:
            checkpoint["ewc_importance"] = self.static_importance

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None:
            for k, v in self.teacher.state_dict().items():
                checkpoint["state_dict"].setdefault(f"teacher.{k}", v)
        if "ewc_importance" in checkpoint:
            self.static_importance = checkpoint["ewc_importance"]


def logit_scale_is_fixed(model: torch.nn.Module, value: float = 100.0) -> None:
    """Set the (frozen) logit scale to ``value`` so every forward agrees with the spec."""
    with torch.no_grad():
        model.logit_scale.fill_(math.log(value))
