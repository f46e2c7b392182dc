"""Contrastive CLIP pre-training on an online stream, with zero-shot evaluation on task families.

The loss is open_clip's ``ClipLoss`` with features gathered across ranks (with gradients), exactly
as open_clip's own trainer does it. Validation = zero-shot accuracy on held-out world task
families (template ensembles); the last validation's table is printed, and the final weights are
written in open_clip's checkpoint format (``<run dir>/clip_final.pt``) so that GIFT and Unicorn
start from them with ``pretrained=<path>``, and as an open_clip ``local-dir:`` folder beside it
(``<run dir>/clip_final.open_clip/``) that open_clip, its trainer and CLIP_benchmark load by path alone
(``docs/clip_clients.md``).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from open_clip.loss import ClipLoss

from models.clip import (check_model_name, create_clip, local_dir_beside, save_open_clip_checkpoint,
                         save_open_clip_local_dir, zero_shot_classifier)
from models.errors import UserError
from models.io import atomic_write
from train.clip import DEFAULT_EVAL_BATCH_SIZE
from train.core.optim import build_optimizer, no_decay_groups
from train.core.resilience import guard_loss
from train.core.strategies import clamp_param_, full_params
from train.clip.zeroshot import EvalSet, build_world_eval_sets, eval_loader, format_accuracy_table

log = logging.getLogger(__name__)

DEFAULT_FAMILIES = ("shape", "color", "count", "material", "size", "relation", "digits")


class CaptionTransform:
    """Sample -> tensors for CLIP: preprocessed image, tokenized caption; the caption text is kept."""

    def __init__(self, preprocess, tokenizer) -> None:
        self.preprocess, self.tokenizer = preprocess, tokenizer

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        text = sample["txt"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"sample {sample.get('__key__')}: empty caption")
        return {"image": self.preprocess(sample["image"]), "text": self.tokenizer([text])[0], "txt": text}


def _check_args(*, model_name: str, lr: float, weight_decay: float, betas, warmup_steps: int,
                total_steps: int | None, eval_families, eval_per_class: int, eval_batch_size: int) -> None:
    """Refuse out-of-range :class:`CLIPPretrain` arguments now, in one line each (``CLIPPretrain.<arg>: ...``),
    not at the first optimizer step or validation."""
    from datagen.world import TASK_FAMILIES

    def bad(key: str, what: str) -> UserError:
        return UserError(f"CLIPPretrain.{key}: {what}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    check_model_name(model_name, "CLIPPretrain.model_name")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise bad("lr", f"must be a number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise bad("weight_decay", f"must be a number >= 0, got {weight_decay!r}")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise bad("betas", f"must be two numbers in [0, 1), e.g. [0.9, 0.98], got {list(betas)!r}")
    if not is_int(warmup_steps) or warmup_steps < 0:
        raise bad("warmup_steps", f"must be an integer >= 0, got {warmup_steps!r}")
    if total_steps is not None and (not is_int(total_steps) or total_steps < 1):
        raise bad("total_steps", f"must be an integer >= 1 or null (= trainer.max_steps), got {total_steps!r}")
    unknown = [f for f in eval_families if f not in TASK_FAMILIES]
    if unknown:
        raise bad("eval_families", f"unknown task families {unknown}; valid: {sorted(TASK_FAMILIES)}")
    for key, value in (("eval_per_class", eval_per_class), ("eval_batch_size", eval_batch_size)):
        if not is_int(value) or value < 1:
            raise bad(key, f"must be an integer >= 1, got {value!r}")


class CLIPPretrain(pl.LightningModule):
    """Contrastive pre-training of an open_clip model.

    Args:
        model_name: open_clip model name (``synthloop-tiny-vit32``, ``ViT-B-16``, ...).
        pretrained: local checkpoint to start from (None = random init).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings, logit scale).
        betas: AdamW betas (open_clip's ViT default (0.9, 0.98)).
        warmup_steps: linear warm-up steps.
        total_steps: cosine horizon; ``None`` = the trainer's ``max_steps``.
        eval_families: world task families scored zero-shot at each validation.
        eval_per_class: held-out images per class in each evaluation set.
        eval_seed: seed of the evaluation sets.
        eval_batch_size: images per batch of the zero-shot validation (inference only; memory, not results).
        export_path: where the final open_clip checkpoint goes (default ``<run dir>/clip_final.pt``); the same
            weights also go to the open_clip ``local-dir:`` folder beside it (``clip_final.pt`` ->
            ``clip_final.open_clip/``, :func:`models.clip.local_dir_beside`).
        publish_path: a stable path the final checkpoint is ALSO copied to, as the starting point of other
            recipes (the quickstart: ``runs/quickstart/clip_final.pt``), with its ``local-dir:`` folder beside
            it (``runs/quickstart/clip_final.open_clip/``). Written only by a run that reached
            its ``max_steps`` and whose command line did not change the config (``synthloop fit`` clears it
            otherwise and says so; giving ``--model.init_args.publish_path`` chooses it explicitly), so a
            short experiment never replaces the weights the toys start from.
    """

    def __init__(
        self,
        model_name: str = "synthloop-tiny-vit32",
        pretrained: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 50,
        total_steps: int | None = None,
        eval_families: list[str] = list(DEFAULT_FAMILIES),
        eval_per_class: int = 40,
        eval_seed: int = 1234,
        eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
        export_path: str | None = None,
        publish_path: str | None = None,
    ) -> None:
        super().__init__()
        _check_args(model_name=model_name, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                    total_steps=total_steps, eval_families=eval_families, eval_per_class=eval_per_class,
                    eval_batch_size=eval_batch_size)
        self.save_hyperparameters()
        try:
            bundle = create_clip(model_name, pretrained=pretrained)
        except UserError as exc:  # model_name is checked above: this is about the pretrained file
            raise UserError(f"CLIPPretrain.pretrained: {exc}") from exc
        self.model = bundle.model
        self.preprocess = bundle.preprocess_val
        self.tokenizer = bundle.tokenizer
        self.image_size = bundle.image_size
        self.loss_fn: ClipLoss | None = None
        self._eval_sets: list[EvalSet] | None = None
        self.last_zero_shot: dict[str, float] = {}

    # -- data ------------------------------------------------------------------------------------
    def sample_transform(self) -> CaptionTransform:
        return CaptionTransform(self.preprocess, self.tokenizer)

    def eval_sets(self) -> list[EvalSet]:
        if self._eval_sets is None:
            self._eval_sets = build_world_eval_sets(self.hparams.eval_families, self.hparams.eval_per_class,
                                                    self.hparams.eval_seed, self.image_size, self.preprocess)
        return self._eval_sets

    def val_dataloader(self):
        return [eval_loader(es, self.hparams.eval_batch_size, self.global_rank, self.trainer.world_size)
                for es in self.eval_sets()]

    # -- training --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        # gather_with_grad: gradients flow through other ranks' features, as in open_clip's trainer
        self.loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank,
                                world_size=world)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(batch["image"], batch["text"])
        loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        clamp_param_(self.model.logit_scale, 0, math.log(100), self)  # DeepSpeed: on its fp32 master copy
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", out["logit_scale"].detach())
        return guard_loss(self, loss)  # a non-finite loss: step skipped on every rank, counted (train/core/resilience.py)

    def configure_optimizers(self):
        groups = no_decay_groups(self.model.named_parameters(), self.hparams.weight_decay)
        return build_optimizer(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas), eps=1e-6,
                               weight_decay=self.hparams.weight_decay, warmup_steps=self.hparams.warmup_steps,
                               total_steps=self.hparams.total_steps or self.trainer.max_steps, owner="CLIPPretrain")

    # -- zero-shot validation --------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        sets = self.eval_sets()
        with full_params(self.model, self):  # ZeRO-3: encode_text reads parameters outside a forward
            self._classifiers = [zero_shot_classifier(self.model, self.tokenizer, es.classnames, es.templates,
                                                      self.device) for es in sets]
        self._counts = torch.zeros(len(sets), 2, device=self.device)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        feats = torch.nn.functional.normalize(self.model.encode_image(images).float(), dim=-1)
        pred = (feats @ self._classifiers[dataloader_idx].T).argmax(-1)
        self._counts[dataloader_idx, 0] += (pred == labels).sum()
        self._counts[dataloader_idx, 1] += labels.numel()

    def on_validation_epoch_end(self) -> None:
        counts = self._counts
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        acc = {es.name: float(c[0] / c[1].clamp(min=1)) for es, c in zip(self.eval_sets(), counts)}
        for name, value in acc.items():
            self.log(f"zeroshot/{name}", value, rank_zero_only=True, add_dataloader_idx=False)
        self.log("zeroshot/mean", sum(acc.values()) / max(len(acc), 1), rank_zero_only=True)
        self.last_zero_shot = acc
        if not self.trainer.sanity_checking:
            n = int(counts[:, 1].sum())  # over all ranks: every evaluation image once
            self.print("\n" + format_accuracy_table(acc, f"zero-shot accuracy at step {self.global_step} ({n} images)"))

    # -- export ------------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        with full_params(self.model, self):  # ZeRO-3: collective, so every rank gathers
            if not self.trainer.is_global_zero:
                return
            path = self.hparams.export_path or str(Path(log_dir or ".") / "clip_final.pt")
            meta = {"step": self.global_step, "zero_shot": self.last_zero_shot}
            save_open_clip_checkpoint(self.model, path, self.hparams.model_name, **meta)
            local_dir = save_open_clip_local_dir(self.model, local_dir_beside(path), self.hparams.model_name,
                                                 tokenizer=self.tokenizer, **meta)
            publish = self.hparams.publish_path
            finished = self.trainer.max_steps is None or self.trainer.max_steps < 0 or \
                self.global_step >= self.trainer.max_steps
            if publish and finished:
                atomic_write(publish, lambda tmp: shutil.copyfile(path, tmp))
                save_open_clip_local_dir(self.model, local_dir_beside(publish), self.hparams.model_name,
                                         tokenizer=self.tokenizer, **meta)
        log.info("wrote open_clip local-dir folder %s", local_dir)
        log.info("wrote open_clip checkpoint %s", path)
        self.print(f"open_clip checkpoint: {path}")
        self.print(f"open_clip local-dir:  {local_dir} (open_clip / open_clip_train / clip_benchmark: "
                   f"--model local-dir:{local_dir})")
        if publish and finished:
            log.info("published it as %s (and %s)", publish, local_dir_beside(publish))
            self.print(f"published as: {publish} (and {local_dir_beside(publish)})")
        elif publish:
            log.warning("not published to %s: the run stopped at step %d of %d", publish, self.global_step,
                        self.trainer.max_steps)
