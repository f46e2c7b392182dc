"""Unicorn's VLM trainer: text-only training of an embedding-input VLM (``docs/specs/unicorn.md``).

One LightningModule, three stages (``stage``):

* ``"text"`` -- the toy recipe's stand-in for LLM pre-training: the LM alone learns to answer
  questions about a scene it is told about, chat turns "caption + question -> answer" (no image).
  ``text_mix="short"`` (default) keeps the multiple-choice and open items only; ``"all"`` adds the
  step-by-step reasoning items and the caption as plain text (their long texts outweigh the one-word
  answers in the loss, and the tiny toy LM then never learns to read: see ``bench/unicorn_reading.py``);
* ``"align"`` (stage A) -- ``<image>`` + caption, **projector only** (LR 5e-4 in the paper);
* ``"instruct"`` (stage B) -- chat-formatted instruction items, loss only on the assistant turns,
  projector + LM (or a LoRA adapter) (LR 1e-5 in the paper).

The visual input of stages A and B is chosen by ``embedding``:

* ``"text"`` (Unicorn) -- the caption's CLIP text embedding, L2-normalised, moved by stage 3
  :func:`datagen.unicorn.modality_transfer` (``transfer_mode`` = raw / mean_shift /
  mean_shift_noise / ideal / realign). ``ideal``/``realign`` also use an unpaired pool of rendered
  images for μ_V (and the ReAlign scale);
* ``"image"`` (the real-image upper bound) -- the rendered scene's CLIP image embedding, normalised
  and centred on the pool mean, exactly what the model gets at test time.

Test-time centring (``test_center="auto"``): images are centred on the evaluation pool's mean for
the modes whose training inputs are centred (mean_shift, mean_shift_noise, real images); for raw,
ideal and realign the training inputs live in the (uncentred) image region, so raw normalised image
embeddings are fed.

The text mean μ_T (also written μ_U) is one running mean over the caption corpus of *all* stages:

* updated *before* use with every training batch (under DDP with the batches of every rank, so all
  ranks hold the same mean) and checkpointed;
* saved in the export (``text_mean.safetensors``, :attr:`models.vlm.EmbeddingVLM.text_mean_state`) and
  continued by a stage started from that export (``init_from``; ``carry_text_mean=False`` restarts it);
* topped up before step 1 to ``text_mean_warmup`` captions (default 1024), drawn from the DataModule's
  source with another seed, so that no stage's first step uses a mean over a handful of captions
  (stage A of a fresh run; a stage B carrying stage A's mean needs none);
* its sample count is logged (``unicorn/text_mean_n``) and printed at the end of each stage, with the
  gap between μ_T and the image pool's mean μ_V (``unicorn/gap_norm`` = ‖μ_V − μ_T‖, the unpaired
  estimate of ‖Δ̄‖, and ``unicorn/means_cos`` = cos(μ_V, μ_T)) whenever that pool is computed (ideal,
  realign; any mode with ``log_mean_gap=True``).

At the end of ``fit``, rank 0 writes the VLM with ``save_pretrained`` (``export_dir``) and, when
``eval_jsonl`` is set, runs the VQA evaluator and writes ``vqa_results.json`` next to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datagen.unicorn import MODES, StreamingMean, gap_diagnostics, modality_transfer
from models.io import atomic_write_text
from models.vlm import ENCODE_BATCH_SIZE, EmbeddingVLM, OpenCLIPVisionTower, build_vlm
from train.core.optim import build_optimizer
from train.core.vlm_data import IGNORE, caption_example, chat_example, format_question, pad_examples
from train.unicorn.vqa_eval import DEFAULT_EVAL_BATCH_SIZE, evaluate_vqa

log = logging.getLogger(__name__)
STAGES = ("text", "align", "instruct")
TEXT_MIXES = ("short", "all")
#: Default ``text_mean_warmup``: corpus captions in μ_T before a stage's first step (see the module docstring).
DEFAULT_TEXT_MEAN_WARMUP = 1024
#: The warm-up captions come from the DataModule's source with ``seed + WARMUP_SEED_OFFSET``: other samples
#: than the ones trained on (a generator's sample i is a function of (seed, i)).
WARMUP_SEED_OFFSET = 7_777_777


class _ImageTransform:
    """Worker-side: preprocess the rendered image when the sample has one (real-image runs)."""

    def __init__(self, preprocess, keep_image: bool) -> None:
        self.preprocess, self.keep_image = preprocess, keep_image

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in sample.items() if k != "image"}
        if self.keep_image:
            if "image" not in sample:
                raise ValueError(f"sample {sample.get('__key__')}: embedding='image' needs rendered images "
                                 "(set the generator's render_size)")
            out["pixels"] = self.preprocess(sample["image"])
        return out


class UnicornVLM(pl.LightningModule):
    """See the module docstring.

    Args:
        stage: ``"text"``, ``"align"`` or ``"instruct"``.
        lm_path: local HF causal LM folder (a fresh projector is put on it) -- or use ``init_from``.
        init_from: a synthloop VLM folder from the previous stage (``save_pretrained`` output).
        clip_model, clip_checkpoint: the contrastive model (open_clip name + local checkpoint).
        embedding: ``"text"`` (Unicorn) or ``"image"`` (real-image upper bound).
        transfer_mode, noise_std, renormalize: stage 3 settings.
        num_visual_tokens, token_mode: K and how the K tokens are made (new VLMs only).
        lr, weight_decay, warmup_steps: AdamW + linear warm-up over ``warmup_steps`` optimizer steps, then
            cosine to 0 at ``trainer.max_steps`` (:func:`train.core.optim.build_optimizer`; the paper warms
            up over 3% of the run: 141 of stage A's 4,700 steps, 222 of stage B's 7,400).
        lora, lora_r, lora_alpha: train a LoRA adapter instead of the full LM in stage B.
        align_train_lm: also train the LM in stage A (off-spec; a diagnostic for LMs too small to be
            conditioned through a frozen input position).
        image_pool_size, image_pool_seed: unpaired rendered images for μ_V (ideal, realign, image).
        pool_batch_size: images per forward when the frozen vision tower embeds that pool.
        max_length: token cap per example.
        text_mix: stage ``"text"`` only: ``"short"`` (multiple-choice and open items) or ``"all"``
            (also reasoning items and the plain caption).
        export, export_dir: whether / where ``save_pretrained`` writes the trained VLM (default ``<log dir>/vlm``).
        eval_jsonl: VQA file evaluated after training (rank 0).
        eval_batch_size: questions per batch of that evaluation's greedy decoding.
        test_center: ``"auto"``, ``"true"`` or ``"false"`` (see module docstring).
        text_mean_warmup: captions the text mean μ_T must hold before the first step (topped up from the
            data source when the carried mean holds fewer; 0 = no warm-up). Text-embedding stages A/B only.
        carry_text_mean: continue the text mean saved in ``init_from`` (default) instead of restarting it.
        log_mean_gap: also render the image pool in modes that do not need it (raw, mean_shift,
            mean_shift_noise) so that ‖μ_V − μ_T‖ and cos(μ_V, μ_T) are logged (costs the pool's rendering
            and encoding once; ideal/realign log them anyway).
    """

    def __init__(self, stage: str = "align", lm_path: str | None = None, init_from: str | None = None,
                 clip_model: str = "synthloop-tiny-rn64", clip_checkpoint: str | None = None,
                 embedding: str = "text", transfer_mode: str = "mean_shift", noise_std: float = 0.0,
                 renormalize: bool = False, num_visual_tokens: int = 1, token_mode: str = "repeat",
                 lr: float = 5e-4, weight_decay: float = 0.0, warmup_steps: int = 100,
                 lora: bool = False, lora_r: int = 16, lora_alpha: int = 32, align_train_lm: bool = False,
                 image_pool_size: int = 1024, image_pool_seed: int = 555_000_111,
                 pool_batch_size: int = ENCODE_BATCH_SIZE, image_size: int = 64,
                 pool_n_objects: tuple[int, int] = (1, 3), max_length: int = 384, text_mix: str = "short",
                 export: bool = True, export_dir: str | None = None, eval_jsonl: str | None = None,
                 eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                 test_center: str = "auto", trust_remote_code: bool = False,
                 text_mean_warmup: int = DEFAULT_TEXT_MEAN_WARMUP, carry_text_mean: bool = True,
                 log_mean_gap: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if embedding not in ("text", "image"):
            raise ValueError(f"embedding must be 'text' or 'image', got {embedding!r}")
        if transfer_mode not in MODES:
            raise ValueError(f"transfer_mode must be one of {MODES}, got {transfer_mode!r}")
        if text_mix not in TEXT_MIXES:
            raise ValueError(f"text_mix must be one of {TEXT_MIXES}, got {text_mix!r}")
        if test_center not in ("auto", "true", "false"):
            raise ValueError(f"test_center must be 'auto', 'true' or 'false', got {test_center!r}")
        if isinstance(text_mean_warmup, bool) or not isinstance(text_mean_warmup, int) or text_mean_warmup < 0:
            raise ValueError(f"text_mean_warmup must be an integer >= 0, got {text_mean_warmup!r}")
        tower_spec = {"type": "open_clip", "model_name": clip_model, "pretrained": clip_checkpoint}
        if init_from is not None:
            # fp32 master weights whatever dtype the folder holds; Lightning's precision plugin does the casting
            self.vlm = EmbeddingVLM.from_pretrained(init_from, torch_dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code)
            if self.vlm.vision_tower is None:
                self.vlm.vision_tower = OpenCLIPVisionTower(clip_model, pretrained=clip_checkpoint)
        elif lm_path is not None:
            tower = OpenCLIPVisionTower(clip_model, pretrained=clip_checkpoint)
            self.vlm = build_vlm(lm_path, tower.embed_dim, num_visual_tokens=num_visual_tokens,
                                 token_mode=token_mode, torch_dtype=torch.float32,
                                 trust_remote_code=trust_remote_code)
            self.vlm.vision_tower = tower
            self.vlm.config.vision_tower = tower_spec
        else:
            raise ValueError("give lm_path (a fresh VLM on an HF causal LM) or init_from (a VLM folder)")
        from models.clip import create_clip

        # the text tower of the same CLIP (frozen); the image tower lives in the VLM's vision tower
        bundle = create_clip(clip_model, pretrained=clip_checkpoint)
        self.clip_text = bundle.model.eval().requires_grad_(False)
        self.clip_tokenizer = bundle.tokenizer
        self.preprocess = bundle.preprocess_val
        if lora and stage == "instruct":
            self.vlm.apply_lora(r=lora_r, alpha=lora_alpha)
        self.vlm.set_trainable(projector=stage != "text", lm=stage != "align" or align_train_lm)
        self.text_mean = StreamingMean(self.vlm.config.embed_dim)
        # where the mean's samples come from: earlier stages (carried), this stage's warm-up, the rest trained on
        self._mean_origin = {"carried": 0, "warmup": 0}
        self._mean_history: list[dict[str, Any]] = []
        if init_from is not None:
            self._carry_text_mean(init_from)
        self.tokens_seen = 0
        self._pool_mean: torch.Tensor | None = None
        self._pool: torch.Tensor | None = None

    # -- the text mean μ_T ------------------------------------------------------------------------
    def uses_text_mean(self) -> bool:
        """This stage encodes captions as visual inputs (so it updates μ_T)."""
        return self.hparams.embedding == "text" and self.hparams.stage != "text"

    def _carry_text_mean(self, init_from: str) -> None:
        """Continue the mean saved with the ``init_from`` VLM (see the module docstring)."""
        hp, state = self.hparams, self.vlm.text_mean_state
        if not hp.carry_text_mean:
            return
        if state is None:
            if self.uses_text_mean():
                log.warning("%s has no saved text mean (an export from before μ_T was saved): μ_T starts from "
                            "zero here (plus a warm-up of %d captions)", init_from, hp.text_mean_warmup)
            return
        info = state.get("info") or {}
        if int(state["dim"]) != self.text_mean.dim or info.get("clip_model", hp.clip_model) != hp.clip_model:
            log.warning("%s: its text mean was computed with CLIP %r (dim %s), this stage uses %r (dim %d): "
                        "μ_T restarts from zero", init_from, info.get("clip_model"), state["dim"], hp.clip_model,
                        self.text_mean.dim)
            return
        if info.get("clip_checkpoint", hp.clip_checkpoint) != hp.clip_checkpoint:
            log.warning("%s: its text mean was computed with the CLIP checkpoint %s, this stage uses %s: carried "
                        "anyway (set carry_text_mean: false to restart it)", init_from, info.get("clip_checkpoint"),
                        hp.clip_checkpoint)
        self.text_mean.load_state_dict(state)
        self._mean_origin["carried"] = self.text_mean.count
        self._mean_history = list(info.get("history", []))

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def update_text_mean(self, u: torch.Tensor) -> None:
        """Fold a batch of text embeddings into μ_T; under DDP the sums and counts of every rank."""
        if self._world_size() > 1:
            stats = torch.cat([u.detach().double().sum(0), u.new_tensor([u.shape[0]], dtype=torch.float64)])
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
            self.text_mean.add(stats[:-1], int(round(float(stats[-1]))))
        else:
            self.text_mean.update(u)

    def _warmup_captions(self, n: int) -> list[str]:
        """``n`` captions of the DataModule's source, another seed than training (every rank the same)."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        if dm is None or (getattr(dm, "shards", None) is None and getattr(dm, "generator", None) is None):
            log.warning("text_mean_warmup=%d: the DataModule (%s) has no generator or shards to draw captions "
                        "from; no warm-up", self.hparams.text_mean_warmup, type(dm).__name__)
            return []
        from datagen.stream import GeneratorStream

        seed = int(getattr(dm, "seed", 0)) + WARMUP_SEED_OFFSET
        kw = {"max_consecutive_failures": dm.max_consecutive_failures} if hasattr(dm, "max_consecutive_failures") \
            else {}
        if getattr(dm, "shards", None) is not None:
            from datagen.shards import ShardStream

            stream = ShardStream(dm.shards, seed=seed, **kw)
        else:
            stream = GeneratorStream(dm.generator, seed=seed, sample_timeout=getattr(dm, "sample_timeout", None), **kw)
        captions: list[str] = []
        samples = iter(stream)
        try:
            for sample in samples:
                if isinstance(sample.get("caption"), str):
                    captions.append(sample["caption"])
                if len(captions) >= n:
                    break
        finally:
            close = getattr(samples, "close", None)
            if close is not None:
                close()  # the stream's own clean-up (open shards, a timeout pool) now, not at garbage collection
        return captions

    @torch.no_grad()
    def warm_up_text_mean(self, captions: list[str] | None = None) -> int:
        """Top μ_T up to ``text_mean_warmup`` captions (drawn by :meth:`_warmup_captions` unless given);
        return how many were added."""
        need = self.hparams.text_mean_warmup - self.text_mean.count
        if need <= 0:
            return 0
        captions = (self._warmup_captions(need) if captions is None else list(captions))[:need]
        for i in range(0, len(captions), ENCODE_BATCH_SIZE):
            self.text_mean.update(self.text_embeddings(captions[i:i + ENCODE_BATCH_SIZE]))
        self._mean_origin["warmup"] += len(captions)
        if len(captions) < need:
            log.warning("text_mean_warmup=%d: only %d captions could be drawn", self.hparams.text_mean_warmup,
                        len(captions))
        return len(captions)

    def mean_gap(self) -> dict[str, float] | None:
        """‖μ_V − μ_T‖ and cos(μ_V, μ_T) with μ_V the image pool's mean, when both means exist."""
        if self._pool_mean is None or self.text_mean.count == 0:
            return None
        mu_t, mu_v = self.text_mean.mean.double(), self._pool_mean.detach().double().cpu()
        return {"gap_norm": float((mu_v - mu_t).norm()),
                "means_cos": float(F.cosine_similarity(mu_v, mu_t, dim=0))}

    def text_mean_summary(self) -> dict[str, Any]:
        """Samples behind μ_T, by origin, and its norm (plus :meth:`mean_gap` when available)."""
        n = self.text_mean.count
        out: dict[str, Any] = {"n": n, **self._mean_origin,
                               "trained": n - self._mean_origin["carried"] - self._mean_origin["warmup"]}
        if n:
            out["norm"] = float(self.text_mean.mean.norm())
        out.update(self.mean_gap() or {})
        return out

    def text_mean_export_state(self) -> dict[str, Any]:
        """``EmbeddingVLM.text_mean_state`` for the export: the mean, its count and its provenance."""
        summary = self.text_mean_summary()
        history = self._mean_history + [{"stage": self.hparams.stage, "embedding": self.hparams.embedding,
                                         **{k: summary[k] for k in ("carried", "warmup", "trained", "n")}}]
        info = {"clip_model": self.hparams.clip_model, "clip_checkpoint": self.hparams.clip_checkpoint,
                "history": history}
        return {**self.text_mean.state_dict(), "info": info}

    def on_train_start(self) -> None:
        if not self.uses_text_mean():
            return
        added = self.warm_up_text_mean()
        if added:
            log.info("text mean μ_T: warm-up of %d captions before step 1 (%d in all)", added, self.text_mean.count)
        if self.hparams.log_mean_gap:
            self._image_pool()

    # -- data ------------------------------------------------------------------------------------
    def sample_transform(self):
        needs_image = self.hparams.embedding == "image" and self.hparams.stage != "text"
        return _ImageTransform(self.preprocess, needs_image)

    def _image_pool(self) -> torch.Tensor:
        """Normalised image embeddings of an unpaired pool of rendered scenes (computed once)."""
        if self._pool is None:
            import numpy as np

            from datagen.world import render_scene, sample_scene

            rng = np.random.default_rng(self.hparams.image_pool_seed)
            pixels = torch.stack([self.preprocess(render_scene(sample_scene(rng, tuple(self.hparams.pool_n_objects)),
                                                               self.hparams.image_size, rng))
                                  for _ in range(self.hparams.image_pool_size)])
            tower, bs = self.vlm.vision_tower, self.hparams.pool_batch_size
            with torch.no_grad():
                self._pool = torch.cat([tower.encode(pixels[i:i + bs].to(self.device))
                                        for i in range(0, len(pixels), bs)])
            self._pool_mean = self._pool.mean(0)
        return self._pool

    def test_center(self) -> bool:
        if self.hparams.test_center != "auto":
            return self.hparams.test_center == "true"
        return self.hparams.embedding == "image" or self.hparams.transfer_mode in ("mean_shift", "mean_shift_noise")

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        from train.core.strategies import full_params

        tokens = self.clip_tokenizer(captions).to(self.device)
        with full_params(self.clip_text, self):  # encode_text reads parameters outside forward
            return F.normalize(self.clip_text.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def visual_inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The (B, D) embeddings the projector gets for this batch (stage 3 or real images)."""
        hp = self.hparams
        if hp.embedding == "image":
            self._image_pool()  # computes the pool and its mean once
            return self.vlm.vision_tower.encode(batch["pixels"]) - self._pool_mean
        u = self.text_embeddings(batch["caption"])
        self.update_text_mean(u)  # the running mean is updated before use
        kw: dict[str, Any] = {"text_mean": self.text_mean.mean.to(u), "renormalize": hp.renormalize}
        if hp.transfer_mode == "mean_shift_noise":
            # seeded by the step: a resumed run draws the same noise as an uninterrupted one
            gen = torch.Generator(device=u.device).manual_seed(1_000_003 * int(self.global_step) + 12345)
            kw.update(noise_std=hp.noise_std, generator=gen)
        if hp.transfer_mode in ("ideal", "realign"):
            pool = self._image_pool()
            kw["image_mean"] = self._pool_mean
            if hp.transfer_mode == "realign":
                kw["image_emb"] = pool
        return modality_transfer(u, hp.transfer_mode, **kw)

    def examples(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tok, hp = self.vlm.tokenizer, self.hparams
        image = self.vlm.expand_image_tokens(self.vlm.config.image_token)
        out = []
        for i, caption in enumerate(batch["caption"]):
            if hp.stage == "align":
                out.append(caption_example(tok, image, caption, hp.max_length))
                continue
            items = batch["items"][i] if "items" in batch else []
            if hp.stage == "text":
                # the LM reads the caption (instead of an image) and answers; "all": plus the caption as plain text
                if hp.text_mix == "short":
                    items = [it for it in items if it.get("type") != "reasoning"]
                turns = [(format_question(it["question"], it.get("options")), it["answer"]) for it in items]
                if turns:
                    turns[0] = (caption + "\n" + turns[0][0], turns[0][1])
                    out.append(chat_example(tok, turns, max_length=hp.max_length))
                if hp.text_mix == "all":
                    out.append(caption_example(tok, "", caption, hp.max_length))
                continue
            turns = [(format_question(it["question"], it.get("options")), it["answer"]) for it in items]
            if not turns:
                raise ValueError(f"stage 'instruct' needs instruction items; sample {i} of the batch has none "
                                 "(use the generator's stage='instructions')")
            turns[0] = (image + "\n" + turns[0][0], turns[0][1])
            ex = chat_example(tok, turns)
            if len(ex["input_ids"]) > hp.max_length:  # the image tokens come first: cutting the end is safe
                ex = {k: v[:hp.max_length] for k, v in ex.items()}
            out.append(ex)
        if not out:
            raise ValueError(f"stage {hp.stage!r}: no sample of this batch has a usable item "
                             f"(text_mix={hp.text_mix!r} keeps multiple-choice and open items only)")
        return pad_examples(out, tok.pad_token_id)

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        tensors = {k: v.to(self.device) for k, v in self.examples(batch).items()}
        visual = None if self.hparams.stage == "text" else self.visual_inputs(batch)
        out = self.vlm(tensors["input_ids"], tensors["attention_mask"], image_embeds=visual,
                       labels=tensors["labels"])
        n_tokens = int((tensors["labels"] != IGNORE).sum())
        self.tokens_seen += int(tensors["attention_mask"].sum())
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch["caption"]))
        self.log("train/answer_tokens", float(n_tokens), batch_size=len(batch["caption"]))
        if self.uses_text_mean():
            bs = len(batch["caption"])
            self.log("unicorn/text_mean_n", float(self.text_mean.count), batch_size=bs)
            for k, v in (self.mean_gap() or {}).items():
                self.log(f"unicorn/{k}", v, batch_size=bs)
        if "rejects" in batch:
            self.log("data/item_rejects", float(sum(sum(r.values()) for r in batch["rejects"])), reduce_fx="sum",
                     batch_size=len(batch["caption"]))
        return out.loss

    def configure_optimizers(self):
        params = [p for p in self.vlm.parameters() if p.requires_grad]
        return build_optimizer(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                               warmup_steps=self.hparams.warmup_steps, total_steps=self.trainer.max_steps,
                               owner="UnicornVLM")

    # -- state -----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unicorn_text_mean"] = self.text_mean.state_dict()
        checkpoint["unicorn_text_mean_origin"] = {**self._mean_origin, "history": self._mean_history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "unicorn_text_mean" in checkpoint:
            self.text_mean.load_state_dict(checkpoint["unicorn_text_mean"])
        origin = checkpoint.get("unicorn_text_mean_origin")
        if origin is not None:
            self._mean_origin = {"carried": int(origin["carried"]), "warmup": int(origin["warmup"])}
            self._mean_history = list(origin.get("history", []))

    # -- export + evaluation ---------------------------------------------------------------------
    def export_dir(self) -> Path:
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        if getattr(self, "_log_dir", None) is None:
            self._log_dir = self.trainer.log_dir  # a broadcast under DDP: on_train_end asks on every rank
        return Path(self._log_dir or ".") / "vlm"

    def on_train_end(self) -> None:
        from train.core.strategies import full_params

        out = self.export_dir()
        if self.uses_text_mean() and self.trainer.is_global_zero:
            m = self.text_mean_summary()
            gap = f"; vs the image pool: ‖μ_V − μ_T‖ {m['gap_norm']:.3f}, cos {m['means_cos']:.3f}" \
                if "gap_norm" in m else ""
            self.print(f"text mean μ_T over {m['n']} captions ({m['carried']} carried from earlier stages, "
                       f"{m['warmup']} warm-up, {m['trained']} trained on in this stage); "
                       f"‖μ_T‖ {m.get('norm', float('nan')):.3f}{gap}")
        if not self.hparams.export:
            return
        self.vlm.text_mean_state = self.text_mean_export_state()
        with full_params(self.vlm, self):  # ZeRO-3: every rank gathers, rank 0 writes
            if self.trainer.is_global_zero:
                self.vlm.save_pretrained(out)
        if not self.trainer.is_global_zero:
            return
        self.print(f"VLM saved to {out}")
        if self.hparams.eval_jsonl and self.hparams.stage != "text":
            # evaluate the exported model: a plain module on rank 0, whatever the training strategy sharded
            result = self.evaluate(self.hparams.eval_jsonl, EmbeddingVLM.from_pretrained(out).to(self.device))
            self.print(f"VQA accuracy {result['accuracy']:.3f} on {result['n']} questions "
                       f"({', '.join(f'{k} {v:.3f}' for k, v in sorted(result['by_type'].items()))})")

    def evaluate(self, jsonl: str, vlm: EmbeddingVLM | None = None) -> dict[str, Any]:
        result = evaluate_vqa(vlm or self.vlm, jsonl, preprocess=self.preprocess, center=self.test_center(),
                              batch_size=self.hparams.eval_batch_size, device=self.device)
        result["setting"] = {"stage": self.hparams.stage, "embedding": self.hparams.embedding,
                             "transfer_mode": self.hparams.transfer_mode, "test_center": self.test_center(),
                             "steps": int(self.global_step), "text_mean_n": self.text_mean.count}
        atomic_write_text(self.export_dir() / "vqa_results.json", json.dumps(result, indent=1))
        return result


@torch.no_grad()
def clip_gap_diagnostics(clip_model: str, clip_checkpoint: str | None, n: int = 1024, seed: int = 4242,
                         image_size: int = 64, n_objects: tuple[int, int] = (1, 3)) -> dict[str, float]:
    """‖Δ̄‖, mean cos(Δ_i, Δ̄) and the energy ratio of a CLIP on paired world data (dense captions)."""
    import numpy as np

    from datagen.world import dense_caption, render_scene, sample_scene
    from models.clip import create_clip, encode_text_normalized

    bundle = create_clip(clip_model, pretrained=clip_checkpoint)
    model = bundle.model.eval()
    rng = np.random.default_rng(seed)
    captions, pixels = [], []
    for _ in range(n):
        scene = sample_scene(rng, n_objects)
        captions.append(dense_caption(scene))
        pixels.append(bundle.preprocess_val(render_scene(scene, image_size, rng)))
    image = F.normalize(model.encode_image(torch.stack(pixels)).float(), dim=-1)
    text = encode_text_normalized(model, bundle.tokenizer, captions, torch.device("cpu"))
    return gap_diagnostics(text, image)
