"""UniFilter scorer training: MSE regression of a small VLM's score to the quality level 0..3 (``docs/unifilter.md``).

Data: any generator of :mod:`datagen.unifilter` (image-caption pairs or interleaved documents; a sample's text
becomes ``"<image> caption"`` or ``"<image> t1 <image> t2 ..."``). Validation: ``val_size`` held-out samples of
the *same* generator with ``split`` set to ``val_split`` (default ``"val"``: scenes from another seed space, never
trained on), drawn with ``val_seed``; every rank scores the whole set, so the metrics need no gathering.

Logged at each validation (``self.log``): ``unifilter/val_acc`` (accuracy of the rounded score, the paper's
metric), ``unifilter/val_spearman`` (rank correlation of score and level), ``unifilter/val_mse``,
``unifilter/val_acc_level{t}`` and the confusion matrix as ``unifilter/val_confusion_{t}{p}`` (true level t,
rounded score p); the matrix is also printed. At the end of ``fit`` rank 0 writes the scorer with
``save_pretrained`` to ``export_dir`` (default ``<log dir>/scorer``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datagen.generator import sample_rng
from models.errors import UserError
from models.unifilter import ScorerConfig, UniFilterScorer, build_scorer, tiny_scorer
from train.core.datamodule import collate_samples
from train.core.optim import build_optimizer, no_decay_groups
from train.core.resilience import guard_loss
from train.unifilter.metrics import N_LEVELS, score_metrics

log = logging.getLogger(__name__)
#: Scenes whose captions make the toy tokenizer's vocabulary (every world word occurs in a few hundred).
VOCAB_SCENES = 300


class ScorerTransform:
    """Worker-side: a :mod:`datagen.unifilter` sample -> ``{"pixels": [tensor, ...], "text", "score"}``.

    ``pixels`` is a list (one tensor per image, in document order) so that documents with different image
    counts collate; the text carries one ``image_token`` placeholder per image, right before its caption.
    """

    def __init__(self, preprocess, image_token: str) -> None:
        self.preprocess, self.image_token = preprocess, image_token

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if "images" in sample:  # an interleaved document
            images, texts = sample["images"], sample["texts"]
        else:
            images, texts = [sample["image"]], [sample["txt"]]
        text = " ".join(f"{self.image_token} {t}" for t in texts)
        return {"pixels": [self.preprocess(im) for im in images], "text": text, "score": float(sample["score"])}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(f"UniFilterTrainer.{msg}")


class UniFilterTrainer(pl.LightningModule):
    """Trains a :class:`models.unifilter.UniFilterScorer` (module docstring).

    Args:
        init_from: a scorer folder (``save_pretrained`` output) to continue from; overrides the builder arguments.
        lm_path: a local causal-LM folder (e.g. Qwen2.5-0.5B) for a real-scale scorer; null = the tiny toy
            Llama built in memory (``lm_hidden``, ``lm_layers``, ``lm_heads``) over the world's words.
        vision_model, vision_pretrained, visual_grid, train_vision: the vision side (:class:`ScorerConfig`);
            ``vision_pretrained`` is a local open_clip checkpoint (with or without ``lm_path``).
        lr, weight_decay, warmup_steps, total_steps: AdamW + warm-up/cosine (:func:`train.core.optim.build_optimizer`;
            the paper: LR 2e-5 for its pretrained 0.5-1.5 B models; a random toy needs ~1e-3).
        val_size, val_seed, val_batch_size, val_split: the held-out validation set (module docstring).
        export, export_dir: whether / where the trained scorer is written.
        seed: initialisation seed of the tiny scorer.
    """

    def __init__(self, init_from: str | None = None, lm_path: str | None = None,
                 vision_model: str = "synthloop-tiny-vit32", vision_pretrained: str | None = None,
                 visual_grid: int = 4, train_vision: bool = True, lm_hidden: int = 128, lm_layers: int = 2,
                 lm_heads: int = 4, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 20,
                 total_steps: int | None = None, val_size: int = 256, val_seed: int = 4242,
                 val_batch_size: int = 64, val_split: str = "val", export: bool = True,
                 export_dir: str | None = None, seed: int = 0) -> None:
        super().__init__()
        _check(lr > 0, f"lr: must be > 0, got {lr!r}")
        _check(isinstance(val_size, int) and val_size >= 1, f"val_size: must be an integer >= 1, got {val_size!r}")
        _check(isinstance(val_batch_size, int) and val_batch_size >= 1,
               f"val_batch_size: must be an integer >= 1, got {val_batch_size!r}")
        _check(val_split in ("val", "test"), f"val_split: must be 'val' or 'test' (never the training split), "
                                             f"got {val_split!r}")
        self.save_hyperparameters()
        if init_from is not None:
            self.scorer = UniFilterScorer.from_pretrained(init_from)
        elif lm_path is not None:
            config = ScorerConfig(vision_model=vision_model, vision_pretrained=vision_pretrained,
                                  visual_grid=visual_grid, train_vision=train_vision)
            self.scorer = build_scorer(config, lm_path)
        else:
            from datagen.text.corpus import world_corpus

            self.scorer = tiny_scorer(world_corpus(n_scenes=VOCAB_SCENES), vision_model=vision_model,
                                      visual_grid=visual_grid, vision_pretrained=vision_pretrained,
                                      train_vision=train_vision, hidden=lm_hidden, layers=lm_layers,
                                      heads=lm_heads, seed=seed)
        self._val_samples: list[dict] | None = None
        self._val_scores: list[torch.Tensor] = []
        self._val_levels: list[torch.Tensor] = []
        self.last_metrics: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------------------------
    def sample_transform(self) -> ScorerTransform:
        return ScorerTransform(self.scorer.preprocess, self.scorer.config.image_token)

    def val_generator(self):
        """The training generator with ``split = val_split`` (a copy; the training one is untouched)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        gen = getattr(dm, "generator", None)
        _check(gen is not None and hasattr(gen, "split"),
               "val_split: validation needs a datagen.unifilter generator (one with a `split`) in data.generator")
        held_out = copy.copy(gen)
        held_out.split = self.hparams.val_split
        return held_out

    def val_samples(self) -> list[dict]:
        """The held-out set: sample ``i`` = ``val_generator().generate(sample_rng(val_seed, i), i)``, transformed;
        invalid samples are skipped (the set is deterministic either way)."""
        if self._val_samples is None:
            gen, transform = self.val_generator(), self.sample_transform()
            out = []
            for i in range(self.hparams.val_size):
                try:
                    s = gen.generate(sample_rng(self.hparams.val_seed, i), i)
                except (RuntimeError, ValueError):
                    continue
                if gen.validate(s) is None:
                    out.append(transform(s))
            self._val_samples = out
        return self._val_samples

    def val_dataloader(self):
        """This rank's share of the held-out set (every ``world_size``-th sample, no padding: the metrics
        gathered in :meth:`on_validation_epoch_end` count each sample once)."""
        samples = self.val_samples()
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        return DataLoader(samples, batch_size=self.hparams.val_batch_size, collate_fn=collate_samples,
                          sampler=list(range(rank, len(samples), world)))

    # -- training --------------------------------------------------------------------------------
    def _scores(self, batch: dict[str, Any]) -> torch.Tensor:
        images = torch.cat([torch.stack(p) for p in batch["pixels"]]).to(self.device)
        return self.scorer.score(list(batch["text"]), images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target = batch["score"].float().to(self.device)
        scores = self._scores(batch)
        loss = F.mse_loss(scores, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        self.log("train/acc", (UniFilterScorer.levels(scores) == target.long()).float().mean(), batch_size=len(target))
        return guard_loss(self, loss)

    def configure_optimizers(self):
        groups = no_decay_groups(self.scorer.named_parameters(), self.hparams.weight_decay)
        return build_optimizer(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                               warmup_steps=self.hparams.warmup_steps,
                               total_steps=self.hparams.total_steps or self.trainer.max_steps, owner="UniFilterTrainer")

    # -- validation ------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_levels = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_scores.append(self._scores(batch).detach().float().cpu())
        self._val_levels.append(batch["score"].long().cpu())

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's validation scores and levels (each rank's list padded to one length for all_gather)."""
        scores = torch.cat(self._val_scores) if self._val_scores else torch.zeros(0)
        levels = torch.cat(self._val_levels) if self._val_levels else torch.zeros(0, dtype=torch.long)
        world = self.trainer.world_size
        if world == 1:
            return scores, levels
        per = -(-len(self.val_samples()) // world)
        local = torch.full((2, per), float("nan"))
        local[0, :len(scores)], local[1, :len(levels)] = scores, levels.float()
        both = self.all_gather(local.to(self.device)).cpu().reshape(world, 2, per).transpose(0, 1).reshape(2, -1)
        keep = ~torch.isnan(both[0])
        return both[0][keep], both[1][keep].long()

    def on_validation_epoch_end(self) -> None:
        scores, levels = self._gathered()  # collective under DDP/DeepSpeed: every rank calls it
        if not len(scores):
            return
        m = score_metrics(scores.numpy(), levels.numpy())
        self.last_metrics = m
        for key in ("acc", "spearman", "mse"):
            self.log(f"unifilter/val_{key}", m[key])
        for t in range(N_LEVELS):
            if m["acc_level"][t] == m["acc_level"][t]:  # not NaN: the level occurs in the set
                self.log(f"unifilter/val_acc_level{t}", m["acc_level"][t])
            for p in range(N_LEVELS):
                self.log(f"unifilter/val_confusion_{t}{p}", float(m["confusion"][t][p]))
        if not self.trainer.sanity_checking:
            self.print(format_confusion(m, f"UniFilter validation at step {self.global_step}"))

    # -- export ----------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not self.hparams.export or not self.trainer.is_global_zero:
            return
        path = self.hparams.export_dir or str(Path(log_dir or ".") / "scorer")
        self.scorer.save_pretrained(path)
        log.info("UniFilter scorer written to %s", path)


def format_confusion(m: dict[str, Any], title: str) -> str:
    """A plain-text table: accuracy, Spearman, MSE and the confusion matrix (rows: true level)."""
    lines = [title, f"  rounded-score accuracy {m['acc']:.3f}   spearman {m['spearman']:.3f}   mse {m['mse']:.3f}",
             "  true \\ rounded    0     1     2     3   acc"]
    for t, row in enumerate(m["confusion"]):
        acc = m["acc_level"][t]
        lines.append(f"  level {t}      " + " ".join(f"{c:5d}" for c in row) + f"  {acc:.2f}")
    return "\n".join(lines)
