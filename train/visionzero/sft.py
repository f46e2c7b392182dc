"""Supervised base stage of the Vision-Zero toy recipe: teach a tiny VLM the world's language.

A tiny Llama with a word-level tokenizer (``models.tiny_lm``) behind the embedding VLM
(``models.vlm.EmbeddingVLM``: open_clip image tower -> projector -> K visual tokens) is trained with
next-token cross-entropy on the targets of :class:`datagen.visionzero.sft.GameSFTSamples` (captions,
world QA, the game's clue and vote formats; votes uniformly random). The result is the *base policy*
of self-play, written with ``EmbeddingVLM.save_pretrained`` to ``export_path``.

    synthloop fit --config configs/visionzero/toy_sft.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from train.core.optim import build_optimizer

log = logging.getLogger(__name__)


def build_toy_vlm(lm_path: str, *, vision_tower: dict[str, Any], num_visual_tokens: int = 4,
                  token_mode: str = "split", tiny_lm: dict[str, Any] | None = None,
                  prompts_path: str | None = None, n_players: int = 5, rounds: int = 2, seed: int = 0):
    """An EmbeddingVLM on a tiny LM; the LM (random init + world tokenizer) is built at ``lm_path`` when missing.

    The tokenizer vocabulary is the world corpus plus rendered game prompts and targets, so every word the
    game uses is a token (``\\boxed{3}`` round-trips exactly).
    """
    from datagen.text.corpus import world_corpus
    from models.tiny_lm import build_tiny_lm
    from models.vlm import build_vlm

    if not (Path(lm_path) / "config.json").is_file():
        from datagen.visionzero.sft import GameSFTSamples

        texts = world_corpus()
        gen = GameSFTSamples(n_civilians=n_players - 1, rounds=rounds, prompts_path=prompts_path)
        texts += gen.corpus(400, seed=seed)
        if prompts_path:
            texts.append(Path(prompts_path).read_text())
        build_tiny_lm(lm_path, texts=texts, seed=seed, **(tiny_lm or {}))
        log.info("built tiny LM at %s", lm_path)
    from models.clip import create_clip  # noqa: F401  (registers the tiny open_clip configs)

    embed_dim = int(vision_tower.pop("embed_dim", 0)) or _clip_embed_dim(vision_tower["model_name"])
    return build_vlm(lm_path, embed_dim, num_visual_tokens=num_visual_tokens, token_mode=token_mode,
                     vision_tower=vision_tower)


def _clip_embed_dim(model_name: str) -> int:
    import open_clip

    import models.clip  # noqa: F401

    return int(open_clip.get_model_config(model_name)["embed_dim"])


class SFTTransform:
    """Sample -> the image tensor plus the prompt and target strings (tokenised in the training step)."""

    def __init__(self, preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, sample: dict) -> dict:
        return {"pixels": self.preprocess(sample["image"]), "prompt": sample["prompt"], "target": sample["target"],
                "kind": sample["kind"]}


class VisionZeroSFT(pl.LightningModule):
    """Supervised base stage (see module docstring).

    Args:
        lm_path: folder of the tiny LM (built there when missing).
        vision_tower: ``{"type": "open_clip", "model_name", "pretrained", "trainable"}``.
        num_visual_tokens, token_mode: projector layout (``"split"``: K distinct tokens).
        tiny_lm: ``build_tiny_lm`` size arguments (hidden, layers, heads...).
        prompts_path: the game's prompt templates (the SFT samples use the same file).
        n_players, rounds: game size (vocabulary; match the data generator).
        lr, weight_decay: AdamW (:func:`train.core.optim.build_optimizer`).
        warmup_steps: linear warm-up in optimizer steps, then cosine decay to ``min_lr_ratio`` × ``lr`` at
            ``trainer.max_steps``.
        betas: AdamW's (β1, β2); the default β2 = 0.98 (not torch's 0.999) suits the short, noisy
            tiny-LM run.
        min_lr_ratio: the cosine's floor as a fraction of the peak LR.
        tower_lr_scale: learning-rate factor of a trainable vision tower (its own parameter group).
        export_path: where the base policy is written (``EmbeddingVLM.save_pretrained``).
    """

    def __init__(self, lm_path: str = "runs/visionzero_toy/tiny_lm", vision_tower: dict[str, Any] | None = None,
                 num_visual_tokens: int = 4, token_mode: str = "split", tiny_lm: dict[str, Any] | None = None,
                 prompts_path: str | None = None, n_players: int = 5, rounds: int = 2, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_steps: int = 50, betas: tuple[float, float] = (0.9, 0.98),
                 min_lr_ratio: float = 0.05, tower_lr_scale: float = 0.1,
                 export_path: str = "runs/visionzero_toy/base_policy", seed: int = 0,
                 num_threads: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_threads:  # on a shared 2-core machine one intra-op thread avoids OpenMP oversubscription
            torch.set_num_threads(int(num_threads))
        tower = dict(vision_tower or {"type": "open_clip", "model_name": "synthloop-tiny-rn64",
                                      "pretrained": "runs/quickstart/clip_final.pt", "trainable": True})
        self.vlm = build_toy_vlm(lm_path, vision_tower=tower, num_visual_tokens=num_visual_tokens,
                                 token_mode=token_mode, tiny_lm=tiny_lm, prompts_path=prompts_path,
                                 n_players=n_players, rounds=rounds, seed=seed)
        from train.visionzero.policy import EmbeddingVLMPolicy

        self.policy = EmbeddingVLMPolicy(self.vlm)

    def sample_transform(self) -> SFTTransform:
        return SFTTransform(self.vlm.vision_tower.preprocess)

    def batch_tensors(self, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        tok = self.vlm.tokenizer
        rows, labels = [], []
        for p, t in zip(prompts, targets):
            p_ids = tok(self.policy.format_prompt(p), add_special_tokens=False)["input_ids"]
            t_ids = tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append(p_ids + t_ids)
            labels.append([-100] * len(p_ids) + t_ids)
        width = max(map(len, rows))
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        lab = torch.tensor([[-100] * (width - len(r)) + r for r in labels], device=self.device)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab,
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Game prompts are ~5x longer than captions / QA: two padded groups instead of one wastes less.
        kinds = batch["kind"]
        groups = [[i for i, k in enumerate(kinds) if k in ("clue", "vote")],
                  [i for i, k in enumerate(kinds) if k not in ("clue", "vote")]]
        total, n_tok = 0.0, 0
        for idx in (g for g in groups if g):
            t = self.batch_tensors([batch["prompt"][i] for i in idx], [batch["target"][i] for i in idx])
            out = self.vlm(images=batch["pixels"][idx], use_cache=False, **t)
            n = int((t["labels"][:, 1:] != -100).sum())
            total = total + out.loss * n
            n_tok += n
        loss = total / max(n_tok, 1)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        tower = [p for p in (self.vlm.vision_tower.parameters() if self.vlm.vision_tower is not None else [])
                 if p.requires_grad]
        tower_ids = {id(p) for p in tower}
        rest = [p for p in self.vlm.parameters() if p.requires_grad and id(p) not in tower_ids]
        groups = [{"params": rest, "lr": self.hparams.lr}]
        if tower:
            groups.append({"params": tower, "lr": self.hparams.lr * self.hparams.tower_lr_scale})
        hp = self.hparams
        return build_optimizer(groups, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas),
                               warmup_steps=hp.warmup_steps, total_steps=self.trainer.max_steps,
                               min_lr_ratio=hp.min_lr_ratio, owner="VisionZeroSFT")

    @torch.no_grad()
    def quick_eval(self, n: int = 96, seed: int = 777) -> dict[str, float]:
        """Greedy answers on held-out SFT samples: exact-match per kind, vote validity and vote spread."""
        from datagen.stream import sample_rng
        from datagen.visionzero import parse_vote
        from datagen.visionzero.sft import GameSFTSamples

        gen = GameSFTSamples(n_civilians=self.hparams.n_players - 1, rounds=self.hparams.rounds,
                             prompts_path=self.hparams.prompts_path)
        samples = [gen.generate(sample_rng(seed, i), i) for i in range(n)]
        outs = self.policy.generate([s["prompt"] for s in samples], [s["image"] for s in samples],
                                    max_new_tokens=40, temperature=0.0)
        res: dict[str, list[float]] = {}
        for s, o in zip(samples, outs):
            if s["kind"] == "vote":
                res.setdefault("vote_valid", []).append(float(isinstance(parse_vote(o.text, self.hparams.n_players),
                                                                         int)))
            elif s["kind"] == "clue":
                res.setdefault("clue_boxed", []).append(float("\\boxed{" in o.text and o.text.rstrip().endswith("}")))
            else:
                res.setdefault(f"{s['kind']}_exact", []).append(float(o.text.strip() == s["target"].strip()))
        return {k: sum(v) / len(v) for k, v in res.items()}

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        path = self.vlm.save_pretrained(self.hparams.export_path)
        self.print(f"base policy: {path}")
        try:
            scores = self.quick_eval()
            self.print("SFT held-out (greedy): " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(scores.items())))
        except Exception as exc:  # diagnostics only
            log.warning("quick_eval failed: %s", exc)


__all__ = ["VisionZeroSFT", "build_toy_vlm", "SFTTransform"]
