"""Unicorn stage 3 at export time: CLIP text embeddings of the captions (``synthloop datagen unicorn --stage3.*``).

L2-normalised CLIP text embeddings of the captions, encoded in batches, stored per sample (float16 by
default) plus their corpus mean ``clip_text_mean.npy`` (float32): the inputs of
:func:`datagen.unicorn.transfer.modality_transfer` (``v̂ = u − μ_T``), left to the consumer so that every
mode stays available.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Stage3:
    """Stage 3 at export time: CLIP text embeddings of the captions (see module docstring).

    Args:
        clip_model: open_clip model name (synthloop's tiny ones are registered by ``models.clip``).
        clip_checkpoint: local checkpoint file; None = random init (plumbing only: meaningless embeddings).
        batch_size: captions per text-tower call.
        device: torch device of the text tower.
        dtype: stored dtype of the per-sample embeddings.
        field: sample field name (tar member ``<key>.<field>.npy``).
    """

    clip_model: str = "synthloop-tiny-rn64"
    clip_checkpoint: str | None = None
    batch_size: int = 256
    device: str = "cpu"
    dtype: Literal["float16", "float32"] = "float16"
    field: str = "clip_text"


class TextEmbedder:
    """Batched, L2-normalised CLIP text embeddings of ``caption`` fields, with their running mean."""

    def __init__(self, cfg: Stage3) -> None:
        import torch

        from datagen.unicorn.transfer import StreamingMean
        from models.clip import create_clip

        self.cfg = cfg
        if cfg.clip_checkpoint is None:
            log.warning("stage3: no clip_checkpoint given: a randomly initialised %s text tower (the embeddings "
                        "exercise the plumbing only)", cfg.clip_model)
        bundle = create_clip(cfg.clip_model, pretrained=cfg.clip_checkpoint, device=cfg.device)
        self.model, self.tokenizer = bundle.model.eval(), bundle.tokenizer
        self.device = torch.device(cfg.device)
        with torch.no_grad():
            dim = self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1]
        self.mean = StreamingMean(int(dim))

    def encode(self, texts: list[str]) -> np.ndarray:
        from models.clip import encode_text_normalized

        return encode_text_normalized(self.model, self.tokenizer, texts, self.device,
                                      batch_size=self.cfg.batch_size).cpu().numpy()

    def add_existing(self, emb: np.ndarray) -> None:
        """Count an already written embedding (resume) in the corpus mean."""
        import torch

        self.mean.update(torch.from_numpy(emb.astype(np.float32)))

    def batched(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Attach ``cfg.field`` to every sample, encoding ``batch_size`` captions at a time."""
        import torch

        it = iter(samples)
        while True:
            batch = list(itertools.islice(it, self.cfg.batch_size))
            if not batch:
                return
            emb = self.encode([s["caption"] for s in batch]).astype(self.cfg.dtype)
            # the mean of the stored values: a resumed export (which reads them back) gets the same mean
            self.mean.update(torch.from_numpy(emb.astype(np.float32)))
            for s, e in zip(batch, emb):
                s[self.cfg.field] = e
                yield s

    def summary(self) -> dict[str, Any]:
        mean = self.mean.mean.numpy() if self.mean.count else None
        return {**asdict(self.cfg), "dim": self.mean.dim, "count": self.mean.count,
                "text_mean_norm": None if mean is None else float(np.linalg.norm(mean))}
