"""Vision-Zero self-play training: Iterative Self-Play Policy Optimization as a LightningModule.

Spec: ``docs/specs/visionzero.md``. Fed by ``OnlineDataModule(generator=GameSetups(...))``: one
sample = one game setup, made, played and scored on one rank. Each training step:

1. plays the batch's games with the *current* policy (:func:`train.visionzero.engine.play_games`):
   every clue turn is one batched generation across all games of the step, every vote of every game
   one more (KV cache, sampling temperature from the config; ``synced_gpus`` under ZeRO-3);
2. rewards: zero-sum clue rewards from the votes, decision rewards +1 / −0.5 / −1, computed once by
   :func:`train.visionzero.engine.score_game` with the run's ``rewards`` section (the same function
   scores the evaluation's games);
3. advantages: clue stage by Role Advantage Estimation (one baseline per role, α = 0.95, updated
   BEFORE use, game by game in global game order so that every rank holds the same baselines);
   decision stage group-normalised within each game, (r − mean) / (std + ε);
4. loss of the ACTIVE stage only (m = 1 clue, m = 0 decision; the other stage was still played):
   ``−mean(A · log π_θ(generated tokens, EOS included)) + τ · KL(π_θ ‖ π_ref)``, τ = 0.04, the KL by
   the k3 estimator ``exp(ref − logp) − (ref − logp) − 1`` per generated token; π_ref = the frozen
   initial policy (a second frozen copy, or the same model with LoRA adapters disabled). Every
   log-prob of the step (π_θ, π_ref, the ``inactive_kl`` anchor) is computed at the SAMPLING
   temperature (logits / ``generation.temperature``, as TRL's GRPO does; 1.0 for greedy decoding):
   :meth:`VisionZeroSelfPlay.score_temperature`;
5. the phase controller (EMAs ρ = 0.95 of the step's accuracy / N/A rate, pooled over all ranks;
   hysteresis 0.9 / 0.1 / 0.4 / 0.5, K_min = 5, patience 20) decides the next step's stage.

RAE baselines and the phase controller are saved in the Lightning checkpoint
(``checkpoint["visionzero"]``), so a resumed run continues with the same phase and baselines.

    synthloop fit --config configs/visionzero/toy_selfplay.yaml
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from datagen.visionzero import GameSetup
from train.core.optim import build_optimizer
from train.core.strategies import is_deepspeed
from train.visionzero.advantage import RoleAdvantage, group_normalize
from train.visionzero.config import KL_COEF, GenerationConfig, LossConfig, PhaseConfig, RewardConfig, coerce
from train.visionzero.engine import GameRecord, format_transcript, play_games
from train.visionzero.loss import all_reduce_sum, k3_kl, policy_loss  # noqa: F401  (k3_kl: re-exported)
from train.visionzero.phase import PhaseController

log = logging.getLogger(__name__)


def setups_from_batch(batch: dict[str, Any]) -> list[GameSetup]:
    """Collated stream samples (lists) -> one :class:`GameSetup` per game."""
    n = len(batch["json"])
    return [GameSetup.from_sample({"image_original": batch["image_original"][i],
                                   "image_modified": batch["image_modified"][i], "json": batch["json"][i]})
            for i in range(n)]


class VisionZeroSelfPlay(pl.LightningModule):
    """Self-play "Who is the spy?" training of a VLM (see the module docstring).

    Args:
        policy_path: local folder of the initial policy (also π_ref).
        policy_type: ``"embedding_vlm"`` (``EmbeddingVLM.save_pretrained`` folder, the toy recipe) or
            ``"hf_vlm"`` (any HF VLM with a processor and chat template, e.g. Qwen2.5-VL).
        dtype: load dtype of an ``hf_vlm`` ("bfloat16"...).
        trust_remote_code: passed to the loaders (off by default).
        prompts_path: prompt templates (default ``configs/visionzero/prompts/game.yaml``).
        generation: sampling, generation budgets, batching and who votes
            (:class:`~train.visionzero.config.GenerationConfig`).
        loss: KL weight, loss aggregation, the off-spec ``inactive_kl`` anchor, RAE decay, group-norm ε,
            log-prob micro-batches (:class:`~train.visionzero.config.LossConfig`).
        rewards: clue-reward β / λ and decision rewards (:class:`~train.visionzero.config.RewardConfig`);
            ``synthloop visionzero-eval`` scores its games with the same section of the config.
        phase: the Iterative-SPO phase controller (:class:`~train.visionzero.config.PhaseConfig`;
            ``mode: alternate`` = released code).
        lr, weight_decay: AdamW (:func:`train.core.optim.build_optimizer`).
        warmup_steps: linear warm-up in optimizer steps, then cosine to 0 at ``total_steps``. Default 0
            (none); the spec's 10 % warm-up is a tenth of ``trainer.max_steps`` (the shipped configs: 16 of
            160 toy steps, 10 of 100 Qwen2.5-VL iterations).
        total_steps: schedule length (default ``trainer.max_steps``).
        lora: ``{"r", "alpha", "dropout", "target_modules"}`` to train LoRA adapters (π_ref = adapters off).
        train_projector: also train the EmbeddingVLM projector (default: yes without LoRA, no with it,
            since π_ref must stay the initial policy).
        gradient_checkpointing: enable gradient checkpointing in the LM.
        log_transcripts_every, n_transcripts: full game transcripts as text (TensorBoard + transcripts.txt).
        export_path: where the trained policy is written at the end (``save_pretrained``; ``hf_vlm``: the
            model with any LoRA adapters merged + the processor, loadable with ``AutoModelForImageTextToText``).
        num_threads: ``torch.set_num_threads`` (CPU runs).
        game_log: a JSONL file per rank (``{game_log}.rank{r}``): which games each step played on which
            rank, with turn / vote counts and the RAE + phase state after the step (placement checks).

    The sections may also be given as dicts in Python; they are kept as dicts in ``hparams`` (and so in
    checkpoints) and as dataclasses in ``self.generation``, ``self.loss_cfg``, ``self.rewards``,
    ``self.phase_cfg``.
    """

    def __init__(self, policy_path: str, policy_type: str = "embedding_vlm", dtype: str | None = None,
                 trust_remote_code: bool = False, prompts_path: str | None = None,
                 generation: GenerationConfig = GenerationConfig(), loss: LossConfig = LossConfig(),
                 rewards: RewardConfig = RewardConfig(), phase: PhaseConfig = PhaseConfig(), lr: float = 1e-5,
                 weight_decay: float = 0.0, warmup_steps: int = 0, total_steps: int | None = None,
                 lora: dict[str, Any] | None = None, train_projector: bool | None = None,
                 gradient_checkpointing: bool = False, log_transcripts_every: int = 25, n_transcripts: int = 2,
                 export_path: str | None = None, num_threads: int | None = None, game_log: str | None = None) -> None:
        super().__init__()
        self.generation = coerce(GenerationConfig, generation, "generation")
        self.loss_cfg = coerce(LossConfig, loss, "loss")
        self.rewards = coerce(RewardConfig, rewards, "rewards")
        self.phase_cfg = coerce(PhaseConfig, phase, "phase")
        self.save_hyperparameters()
        for name, section in (("generation", self.generation), ("loss", self.loss_cfg), ("rewards", self.rewards),
                              ("phase", self.phase_cfg)):
            self.hparams[name] = asdict(section)  # plain dicts: checkpoints load with weights_only=True
        if num_threads:  # on a shared 2-core machine one intra-op thread avoids OpenMP oversubscription
            torch.set_num_threads(int(num_threads))
        if policy_type not in ("embedding_vlm", "hf_vlm"):
            raise ValueError(f"policy_type must be 'embedding_vlm' or 'hf_vlm', got {policy_type!r}")
        self.rae = RoleAdvantage(self.loss_cfg.rae_alpha)
        self.phase_ctl = PhaseController(**asdict(self.phase_cfg))
        self.vlm: torch.nn.Module | None = None
        self.ref: torch.nn.Module | None = None
        # inactive_kl: (phase, frozen snapshot) -- kept out of the module tree (no state_dict/optimizer entry)
        object.__setattr__(self, "_anchor", None)
        object.__setattr__(self, "_anchor_pending", None)
        self.policy = None
        self._transcript_file: Path | None = None

    # -- model ------------------------------------------------------------------------------------
    def _load(self) -> tuple[torch.nn.Module, Any]:
        hp = self.hparams
        if hp.policy_type == "embedding_vlm":
            from models.vlm import EmbeddingVLM

            vlm = EmbeddingVLM.from_pretrained(hp.policy_path, trust_remote_code=hp.trust_remote_code)
            return vlm, None
        from train.visionzero.policy import HFVLMPolicy

        pol = HFVLMPolicy.from_pretrained(hp.policy_path, dtype=hp.dtype, trust_remote_code=hp.trust_remote_code)
        return pol.model, pol.processor

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        from train.core.strategies import hf_zero3_config

        # under ZeRO-3, from_pretrained must know that Lightning's zero.Init partitions what it creates
        object.__setattr__(self, "_hf_ds_config", hf_zero3_config(self))
        hp = self.hparams
        vlm, processor = self._load()
        lora = hp.lora
        if hp.policy_type == "embedding_vlm":
            from train.visionzero.policy import EmbeddingVLMPolicy

            if lora:
                vlm.apply_lora(r=lora.get("r", 16), alpha=lora.get("alpha", 32), dropout=lora.get("dropout", 0.05),
                               target_modules=lora.get("target_modules"))
            train_proj = hp.train_projector if hp.train_projector is not None else not lora
            if lora and train_proj:
                raise ValueError("lora with train_projector=True: π_ref (adapters disabled) would use the trained "
                                 "projector; keep train_projector false with LoRA")
            vlm.set_trainable(projector=train_proj, lm=True)
            if hp.gradient_checkpointing:
                vlm.lm.gradient_checkpointing_enable()
            self.vlm = vlm
            self.policy = EmbeddingVLMPolicy(vlm)
        else:
            from train.visionzero.policy import HFVLMPolicy

            if lora:
                from peft import LoraConfig, get_peft_model

                vlm = get_peft_model(vlm, LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32),
                                                     lora_dropout=lora.get("dropout", 0.05),
                                                     target_modules=lora.get("target_modules", "all-linear")))
            if hp.gradient_checkpointing:
                vlm.gradient_checkpointing_enable()
            self.vlm = vlm
            self.policy = HFVLMPolicy(vlm, processor)
        if not lora:
            # π_ref: the initial policy, loaded a second time (not deep-copied, so that it is created under
            # the same sharding context as the policy, e.g. ZeRO-3 partitioning) and frozen.
            ref, _ = self._load()
            ref.requires_grad_(False)
            ref.eval()
            self.ref = ref

    @property
    def score_temperature(self) -> float:
        """The temperature of every log-prob of a step: the sampling temperature (1.0 when greedy).

        The responses are sampled at ``generation.temperature``; scoring them at the same temperature
        keeps the policy gradient and the k3 KL (an estimator that assumes samples of the scored π_θ)
        on the distribution actually sampled.
        """
        from train.visionzero.policy import score_temperature

        return score_temperature(self.generation.temperature)

    def policy_logprobs(self, gens, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.policy.logprobs`` at the sampling temperature with the configured micro-batches."""
        return self.policy.logprobs(gens, model=model, micro_batch=self.loss_cfg.logprob_micro_batch,
                                    temperature=self.score_temperature)

    def ref_logprobs(self, gens) -> torch.Tensor:
        """Log-probs of ``gens`` under π_ref (no grad), at the sampling temperature like the policy's."""
        with torch.no_grad():
            if self.ref is not None:
                self.ref.eval()
                return self.policy_logprobs(gens, model=self.ref)[0]
            with self.policy.reference_context():
                return self.policy_logprobs(gens)[0]

    # -- data -------------------------------------------------------------------------------------
    def sample_transform(self):
        return None  # setups stay PIL images + JSON; the policy preprocesses what it needs

    # -- distributed helpers ------------------------------------------------------------------------
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _all_gather_objects(self, obj: Any) -> list[Any]:
        if self._world() > 1 and dist.is_available() and dist.is_initialized():
            out: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def _synced_gpus(self) -> bool:
        if self.generation.synced_gpus is not None:
            return bool(self.generation.synced_gpus)
        from train.core.strategies import zero_stage

        strategy = getattr(self._trainer, "strategy", None) if self._trainer is not None else None
        return bool(zero_stage(strategy) == 3 and self._world() > 1)

    # -- rollouts -----------------------------------------------------------------------------------
    def gen_kwargs(self) -> dict[str, Any]:
        g = self.generation
        clue = {"max_new_tokens": g.clue_max_new_tokens}
        dec = {"max_new_tokens": g.decision_max_new_tokens}
        if g.fixed_length:
            clue["min_new_tokens"], dec["min_new_tokens"] = g.clue_max_new_tokens, g.decision_max_new_tokens
        return {"temperature": g.temperature, "top_p": g.top_p, "synced_gpus": self._synced_gpus(),
                "batch_size": g.batch_size, "clue": clue, "decision": dec}

    def play(self, setups: list[GameSetup]) -> tuple[list[GameRecord], dict[str, float]]:
        """Play ``setups`` with the current policy, scored with this run's ``rewards``; records and rollout timing."""
        from train.visionzero.policy import generate_fn

        if hasattr(self.policy, "clear_cache"):
            self.policy.clear_cache()
        # Rollout sampling seeded by the games themselves: a resumed run replays the same rollouts.
        torch.manual_seed(sum(int(s.seed) for s in setups) % (2**63 - 1))
        t0 = time.perf_counter()
        records = play_games(setups, generate_fn(self.policy, **self.gen_kwargs()), prompts_path=self.hparams.prompts_path,
                             decision=self.generation.decision, observer_samples=self.generation.observer_samples,
                             rewards=self.rewards)
        dt = time.perf_counter() - t0
        tokens = sum(len(pt.generation.data.response_ids) for r in records for pt in r.turns) + \
            sum(len(g.data.response_ids) for r in records for g in r.vote_generations)
        return records, {"rollout_s": dt, "tokens": float(tokens)}

    # -- advantages ---------------------------------------------------------------------------------
    def score(self, records: list[GameRecord]) -> dict[str, Any]:
        """Advantages of played (and already scored) games: RAE for clues, group-normalised for votes."""
        # RAE: every rank folds in every game of the step, in global game order, update before use.
        local = [(rec.setup.index, r, rec.clue_rewards[rec.setup.spy - 1],
                  [rec.clue_rewards[j - 1] for j in rec.setup.civilians]) for r, rec in enumerate(records)]
        rank = self.global_rank if self._trainer is not None else 0
        everything = [(idx, src, pos, rs, rc) for src, part in enumerate(self._all_gather_objects(local))
                      for idx, pos, rs, rc in part]
        clue_adv: dict[int, list[float]] = {}
        for idx, src, pos, r_spy, r_civ in sorted(everything, key=lambda x: (x[0], x[1], x[2])):
            a_spy, a_civ = self.rae.step(r_spy, r_civ)
            if src == rank:
                rec = records[pos]
                adv = [0.0] * rec.setup.n_players
                adv[rec.setup.spy - 1] = a_spy
                for j, av in zip(rec.setup.civilians, a_civ):
                    adv[j - 1] = av
                clue_adv[pos] = adv
        dec_adv = [group_normalize(rec.decision_rewards, eps=self.loss_cfg.adv_eps) for rec in records]
        return {"clue_adv": [clue_adv[i] for i in range(len(records))], "dec_adv": dec_adv}

    # -- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp, lc = self.hparams, self.loss_cfg
        setups = setups_from_batch(batch)
        phase = self.phase_ctl.phase  # the stage trained in THIS iteration
        records, timing = self.play(setups)
        adv = self.score(records)

        if phase == "clue":
            gens = [pt.generation for r in records for pt in r.turns]
            a = [adv["clue_adv"][g][pt.turn.seat - 1] for g, r in enumerate(records) for pt in r.turns]
        else:
            gens = [gen for r in records for gen in r.vote_generations]
            a = [x for g in range(len(records)) for x in adv["dec_adv"][g]]
        logp, mask = self.policy_logprobs(gens)  # at the sampling temperature, like π_ref's
        ref_logp = self.ref_logprobs(gens)
        a_t = torch.tensor(a, dtype=logp.dtype, device=logp.device)
        loss, parts = policy_loss(logp, ref_logp, mask, a_t, lc.kl_coef, lc.agg)
        if lc.inactive_kl > 0:  # off-spec anchor of the other stage's outputs (see LossConfig)
            other = ([gen for r in records for gen in r.vote_generations] if phase == "clue"
                     else [pt.generation for r in records for pt in r.turns])
            if other:
                lp_o, m_o = self.policy_logprobs(other)
                with torch.no_grad():
                    anchor_lp = self.policy_logprobs(other, model=self.phase_anchor(phase))[0]
                no_adv = torch.zeros(len(other), dtype=lp_o.dtype, device=lp_o.device)
                anchor, kl_parts = policy_loss(lp_o, anchor_lp, m_o, no_adv, lc.inactive_kl, lc.agg)
                loss = loss + anchor
                parts["kl_inactive"] = kl_parts["kl"]

        # statistics pooled over ranks (the phase controller must be identical everywhere)
        n_votes = sum(len(r.votes) for r in records)
        spy_r = [r.clue_rewards[r.setup.spy - 1] for r in records]
        civ_r = [x for r in records for j, x in enumerate(r.clue_rewards, 1) if j != r.setup.spy]
        dec_r = [x for r in records for x in r.decision_rewards]
        zero_dec = sum(all(v == 0.0 for v in g) for g in adv["dec_adv"])
        zero_clue = sum(max(r.clue_rewards) == min(r.clue_rewards) for r in records)
        t = all_reduce_sum({
            "votes": n_votes, "correct": sum(r.n_correct for r in records), "na": sum(r.n_na for r in records),
            "invalid": sum(r.n_invalid for r in records), "games": len(records), "spy_reward": sum(spy_r),
            "civilians": len(civ_r), "civilian_reward": sum(civ_r), "decision_reward": sum(dec_r),
            "zero_var_decision": zero_dec, "zero_var_clue": zero_clue, "tokens": timing["tokens"],
            "rollout_s": timing["rollout_s"], "clue_format_ok": sum(pt.format_ok for r in records for pt in r.turns),
            "turns": sum(len(r.turns) for r in records)}, self.device)
        nv, ng = max(t["votes"], 1), max(t["games"], 1)
        acc, na = t["correct"] / nv, t["na"] / nv
        next_phase = self.phase_ctl.step(acc, na)

        bs = len(records)
        metrics = {
            "phase": 1.0 if phase == "clue" else 0.0,
            "game/accuracy": acc, "game/na_rate": na, "game/invalid_rate": t["invalid"] / nv,
            "game/clue_format_ok": t["clue_format_ok"] / max(t["turns"], 1),
            "reward/clue_spy": t["spy_reward"] / ng, "reward/clue_civilian": t["civilian_reward"] / max(t["civilians"], 1),
            "reward/decision": t["decision_reward"] / nv,
            "rae/b_spy": self.rae.b_spy, "rae/b_civ": self.rae.b_civ,
            "phase/acc_ema": self.phase_ctl.history[-1]["acc_ema"], "phase/na_ema": self.phase_ctl.history[-1]["na_ema"],
            "adv/zero_var_frac_decision": t["zero_var_decision"] / ng, "adv/zero_var_frac_clue": t["zero_var_clue"] / ng,
            "adv/mean_abs": float(a_t.abs().mean()) if len(a) else 0.0,
            "loss/pg": parts["pg"], "loss/kl": parts["kl"], "loss/kl_inactive": parts.get("kl_inactive", 0.0),
            "perf/tokens_per_s": t["tokens"] / max(t["rollout_s"] / max(self._world(), 1), 1e-9),
            "perf/rollout_s": timing["rollout_s"], "perf/gen_tokens": timing["tokens"],
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=bs, rank_zero_only=True)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log("acc", acc, prog_bar=True, batch_size=bs, rank_zero_only=True)
        self._maybe_log_transcripts(records, phase, next_phase)
        if hp.game_log:
            rank = self.global_rank if self._trainer is not None else 0
            entry = {"rank": rank, "step": int(self.global_step), "phase": phase, "next_phase": next_phase,
                     "games": [{"index": r.setup.index, "turns": len(r.turns), "votes": len(r.votes),
                                "spy": r.setup.spy} for r in records],
                     "rae": self.rae.state_dict(), "acc_ema": self.phase_ctl.acc_ema}
            with open(f"{hp.game_log}.rank{rank}", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        return loss

    def phase_anchor(self, phase: str) -> torch.nn.Module:
        """The frozen snapshot of the policy taken when ``phase`` began (``inactive_kl``)."""
        if self._anchor is None or self._anchor[0] != phase:
            if self._trainer is not None and is_deepspeed(self.trainer.strategy):
                raise ValueError("inactive_kl needs a copy of the policy: not supported under DeepSpeed")
            snap = copy.deepcopy(self.vlm).requires_grad_(False).eval()
            pending = self._anchor_pending
            if pending is not None and pending["phase"] == phase:  # resumed mid-phase: that phase's snapshot
                snap.load_state_dict(pending["state_dict"])
            object.__setattr__(self, "_anchor", (phase, snap))
            object.__setattr__(self, "_anchor_pending", None)
        return self._anchor[1]

    def _maybe_log_transcripts(self, records: list[GameRecord], phase: str, next_phase: str) -> None:
        hp = self.hparams
        step = self.global_step
        if self._trainer is None or hp.log_transcripts_every <= 0 or step % hp.log_transcripts_every != 0:
            return
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if not self.trainer.is_global_zero:
            return
        text = "\n\n".join(format_transcript(r, f"step {step}, phase {phase} -> {next_phase}")
                           for r in records[:hp.n_transcripts])
        logger = self.trainer.logger
        exp = getattr(logger, "experiment", None) if logger is not None else None
        if exp is not None and hasattr(exp, "add_text"):
            exp.add_text("games/transcripts", "```\n" + text + "\n```", step)
        if log_dir:
            path = Path(log_dir) / "transcripts.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text + "\n\n")

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.vlm.parameters() if p.requires_grad]
        return build_optimizer(params, lr=hp.lr, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
                               total_steps=hp.total_steps or self.trainer.max_steps, owner="VisionZeroSelfPlay")

    # -- state ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["visionzero"] = {"rae": self.rae.state_dict(), "phase": self.phase_ctl.state_dict()}
        if self._anchor is not None:
            checkpoint["visionzero"]["anchor"] = {"phase": self._anchor[0], "state_dict": self._anchor[1].state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("visionzero")
        if state is None:
            log.warning("checkpoint has no Vision-Zero state: RAE baselines and phase start fresh")
            return
        self.rae.load_state_dict(state["rae"])
        self.phase_ctl.load_state_dict(state["phase"])
        object.__setattr__(self, "_anchor_pending", state.get("anchor"))

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        # the frozen reference is rebuilt from policy_path: keep it out of checkpoints
        return {k: v for k, v in sd.items() if not k.startswith("ref.")}

    def load_state_dict(self, state_dict, strict: bool = True, *args, **kwargs):
        if self.ref is not None and strict:
            missing = {k for k in super().state_dict() if k.startswith("ref.")}
            state_dict = dict(state_dict)
            own = super().state_dict()
            for k in missing:
                state_dict.setdefault(k, own[k])
        return super().load_state_dict(state_dict, strict, *args, **kwargs)

    def on_train_end(self) -> None:
        from train.core.strategies import full_params

        out_dir = Path(self.trainer.log_dir or ".")  # a collective under DDP: every rank must ask
        hist = {"history": self.phase_ctl.history, "rae": self.rae.state_dict()}
        if self.trainer.is_global_zero:
            (out_dir / "phase_history.json").write_text(json.dumps(hist, indent=1))
        if not self.hparams.export_path:
            return
        # ZeRO-3 partitions the policy across ranks: every rank joins the gather, rank 0 writes the whole model
        with full_params(self.vlm, self):
            if self.trainer.is_global_zero:
                export = Path(self.hparams.export_path)
                if hasattr(self.policy, "save_pretrained"):  # hf_vlm: model (LoRA merged) + processor
                    self.policy.save_pretrained(export)
                elif hasattr(self.vlm, "save_pretrained"):
                    self.vlm.save_pretrained(export)
                (export / "phase_history.json").write_text(json.dumps(hist, indent=1))
                self.print(f"trained policy: {export}")
