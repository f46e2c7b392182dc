"""The evaluation-set type shared by every evaluator of a CLIP (world families, MTIL folders).

It lives on the data side because data sources build it (``datagen.gift.folders``) and the trainers
read it (``train.clip.zeroshot``); ``datagen`` never imports ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EvalSet:
    """A fixed evaluation set of one task family, already preprocessed to tensors."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: torch.Tensor  # (N, 3, H, W)
    labels: torch.Tensor  # (N,)
