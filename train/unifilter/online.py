"""The UniFilter scorer as an online filter stage of any recipe's stream (``docs/unifilter.md``).

    data:
      class_path: train.core.OnlineDataModule
      init_args:
        generator: {class_path: datagen.unifilter.LevelCaptions, init_args: {image_size: 64}}
        batch_size: 64
        sample_filter:
          class_path: train.unifilter.ScoreFilter
          init_args: {scorer: runs/unifilter-toy/version_0/scorer, min_score: 2.5}

The DataLoader workers only preprocess each sample's image for the scorer and pass its caption on
(:meth:`ScoreFilter.sample_fields`); the scoring runs batched in the training process, on the trainer's device,
under ``torch.no_grad`` with the scorer in eval mode (:meth:`ScoreFilter.decide`). Re-batching, counts and
exact resume are :mod:`train.core.filtering`'s. Drop reasons: ``below_min_score`` and ``outside_top_fraction``
(of each raw batch of ``OnlineDataModule.batch_size`` samples).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from models.errors import UserError
from train.core.filtering import BatchFilter


class ScoreFilter(BatchFilter):
    """Keep samples whose UniFilter score is at least ``min_score``, or the ``top_fraction`` best of each batch.

    Args:
        scorer: a scorer folder written by ``UniFilterScorer.save_pretrained`` (checksums verified).
        min_score: keep a sample when its score is >= this (levels: 3 = exact caption ... 0 = unrelated).
        top_fraction: instead, keep the ``ceil(top_fraction * B)`` highest-scoring samples of each raw batch.
        image_field / text_field: the raw sample's image and caption fields (the world's ``image`` / ``txt``).
    """

    def __init__(self, scorer: str, min_score: float | None = None, top_fraction: float | None = None,
                 image_field: str = "image", text_field: str = "txt") -> None:
        from models.unifilter import UniFilterScorer

        if (min_score is None) == (top_fraction is None):
            raise UserError("ScoreFilter: give exactly one of min_score and top_fraction")
        if top_fraction is not None and not 0.0 < float(top_fraction) <= 1.0:
            raise UserError(f"ScoreFilter.top_fraction: must be in (0, 1], got {top_fraction!r}")
        if min_score is not None and not math.isfinite(float(min_score)):
            raise UserError(f"ScoreFilter.min_score: must be a finite number, got {min_score!r}")
        if not Path(scorer).is_dir():
            raise UserError(f"ScoreFilter.scorer: {scorer!r} is not a folder; give a UniFilter scorer folder "
                            f"(save_pretrained output, e.g. runs/unifilter-toy/version_0/scorer)")
        self.scorer_path = str(scorer)
        self.scorer = UniFilterScorer.from_pretrained(scorer).eval()
        self.scorer.requires_grad_(False)
        self.min_score, self.top_fraction = min_score, top_fraction
        self.image_field, self.text_field = image_field, text_field

    def sample_fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, text = sample.get(self.image_field), sample.get(self.text_field)
        if image is None or not isinstance(text, str):
            raise ValueError(f"ScoreFilter: the sample has no {self.image_field!r} image or no {self.text_field!r} "
                             f"text (fields: {sorted(k for k in sample if not k.startswith('_'))})")
        return {"_filter_pixels": self.scorer.preprocess(image), "_filter_text": text}

    def to(self, device: torch.device | str) -> "ScoreFilter":
        self.scorer.to(device)
        return self

    @torch.no_grad()
    def scores(self, batch: dict[str, Any]) -> torch.Tensor:
        device = self.scorer.score_head.weight.device
        token = self.scorer.config.image_token
        texts = [f"{token} {t}" for t in batch["_filter_text"]]
        return self.scorer.score(texts, batch["_filter_pixels"].to(device)).float()

    def decide(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[str | None]]:
        scores = self.scores(batch).cpu()
        if self.min_score is not None:
            keep, reason = scores >= float(self.min_score), "below_min_score"
        else:
            n_keep = math.ceil(float(self.top_fraction) * len(scores))
            order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))  # ties: earlier sample
            keep = torch.zeros(len(scores), dtype=torch.bool)
            keep[order[:n_keep]] = True
            reason = "outside_top_fraction"
        return keep, [None if k else reason for k in keep.tolist()]
