"""Vision-Zero self-play training: Iterative Self-Play Policy Optimization as a LightningModule.

Spec: ``shared/methods/visionzero.md``. Fed by ``OnlineDataModule(generator=GameSetups(...))``: one
sample = one game setup, made, played and scored on one rank. Each training step:

1. plays the batch's games with the *current* policy (:func:`train.visionzero.engine.play_games`):
   every clue turn is one batched generation across all games of the step, every vote of every game
   one more (KV cache, sampling temperature from the config; ``synced_gpus`` under ZeRO-3);
2. rewards: zero-sum clue rewards from the votes, decision rewards +1 / −0.5 / −1;
3. advantages: clue stage by Role Advantage Estimation (one baseline per role, α = 0.95, updated
   BEFORE use, game by game in global game order so that every rank holds the same baselines);
   decision stage group-normalised within each game, (r − mean) / (std + ε);
4. loss of the ACTIVE stage only (m = 1 clue, m = 0 decision; the other stage was still played):
   ``−mean(A · log π_θ(generated tokens, EOS included)) + τ · KL(π_θ ‖ π_ref)``, τ = 0.04, the KL by
   the k3 estimator ``exp(ref − logp) − (ref − logp) − 1`` per generated token; π_ref = the frozen
   initial policy (a second frozen copy, or the same model with LoRA adapters disabled);
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
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from datagen.visionzero import GameSetup, PhaseController, RoleAdvantage, group_normalize
from datagen.visionzero.rules import BETA, DECISION_REWARDS, LAMBDA, RAE_ALPHA
from train.core.optim import warmup_cosine
from train.core.strategies import is_deepspeed
from train.visionzero.engine import GameRecord, format_transcript, play_games

log = logging.getLogger(__name__)
KL_COEF = 0.04  # spec: τ


def setups_from_batch(batch: dict[str, Any]) -> list[GameSetup]:
    """Collated stream samples (lists) -> one :class:`GameSetup` per game."""
    n = len(batch["json"])
    return [GameSetup.from_sample({"image_original": batch["image_original"][i],
                                   "image_modified": batch["image_modified"][i], "json": batch["json"][i]})
            for i in range(n)]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) on samples of π_θ: exp(r) − r − 1 with r = ref − logp (≥ 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def policy_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
                kl_coef: float = KL_COEF, agg: str = "seq_mean") -> tuple[torch.Tensor, dict[str, float]]:
    """``−mean(A · log π) + τ · KL`` over generated tokens (EOS included; ``mask`` marks them).

    ``agg="seq_mean"`` (default, GRPO's): mean over each sequence's tokens, then over sequences;
    ``"token_mean"``: one mean over every generated token of the batch.
    """
    kl = k3_kl(logp, ref_logp.detach())
    pg = adv.unsqueeze(1) * logp
    if agg == "seq_mean":
        n = mask.sum(1).clamp(min=1)
        pg_term = ((pg * mask).sum(1) / n).mean()
        kl_term = ((kl * mask).sum(1) / n).mean()
    elif agg == "token_mean":
        n = mask.sum().clamp(min=1)
        pg_term, kl_term = (pg * mask).sum() / n, (kl * mask).sum() / n
    else:
        raise ValueError(f"agg must be 'seq_mean' or 'token_mean', got {agg!r}")
    loss = -pg_term + kl_coef * kl_term
    return loss, {"pg": float(pg_term.detach()), "kl": float(kl_term.detach())}


class VisionZeroSelfPlay(pl.LightningModule):
    """Self-play "Who is the spy?" training of a VLM (see the module docstring).

    Args:
        policy_path: local folder of the initial policy (also π_ref).
        policy_type: ``"embedding_vlm"`` (``EmbeddingVLM.save_pretrained`` folder, the toy recipe) or
            ``"hf_vlm"`` (any HF VLM with a processor and chat template, e.g. Qwen2.5-VL).
        dtype: load dtype of an ``hf_vlm`` ("bfloat16"...); ``trust_remote_code`` off by default.
        prompts_path: prompt templates (default ``configs/visionzero/prompts/game.yaml``).
        temperature, top_p: sampling (spec: ≈ 0.8).
        clue_max_new_tokens, decision_max_new_tokens: generation budgets per clue / vote.
        fixed_length: ``min_new_tokens = max_new_tokens`` (a fixed number of generation steps).
        synced_gpus: keep ranks stepping together during generation; ``None`` = on under DeepSpeed
            ZeRO-3 with several processes.
        gen_batch_size, logprob_micro_batch: split generation / log-prob forwards (None = one batch).
        lr, weight_decay, warmup_ratio, total_steps: AdamW, linear warm-up (10 %) then cosine.
        kl_coef: τ. loss_agg: "seq_mean" | "token_mean" (see :func:`policy_loss`).
        inactive_kl: NOT in the spec (0 = the paper): also anchor the INACTIVE stage's outputs of the
            step (the clues while the decision stage trains, the votes while the clue stage trains) with
            this weight × the same k3 KL, no policy-gradient term, to a frozen snapshot of the policy
            taken when the current phase began (so the anchor keeps the other stage where it was and
            never pulls it back to π_ref). For small policies whose clue and vote outputs share most
            weights (docs/visionzero.md, "stage interference"). Not under DeepSpeed.
        beta, lam: clue-reward weights. rae_alpha: RAE decay (released code: 0.9).
        decision_reward: ``[correct, abstain, wrong]`` (spec: 1, −0.5, −1).
        decision: ``"civilians"`` (paper) or ``"observer"`` (released code: one observer prompt sampled
            ``observer_samples`` times; ``observer_reward="shaped"`` uses the code's shaped reward).
        phase: :class:`PhaseController` arguments (``mode="alternate"`` = released code).
        lora: ``{"r", "alpha", "dropout", "target_modules"}`` to train LoRA adapters (π_ref = adapters off).
        train_projector: also train the EmbeddingVLM projector (default: yes without LoRA, no with it,
            since π_ref must stay the initial policy).
        adv_eps: ε of the group normalisation.
        log_transcripts_every, n_transcripts: full game transcripts as text (TensorBoard + transcripts.txt).
        export_path: where the trained policy is written at the end (``save_pretrained``).
        num_threads: ``torch.set_num_threads`` (CPU runs).
        game_log: a JSONL file per rank (``{game_log}.rank{r}``): which games each step played on which
            rank, with turn / vote counts and the RAE + phase state after the step (placement checks).
    """

    def __init__(self, policy_path: str, policy_type: str = "embedding_vlm", dtype: str | None = None,
                 trust_remote_code: bool = False, prompts_path: str | None = None, temperature: float = 0.8,
                 top_p: float = 1.0, clue_max_new_tokens: int = 24, decision_max_new_tokens: int = 8,
                 fixed_length: bool = False, synced_gpus: bool | None = None, gen_batch_size: int | None = None,
                 logprob_micro_batch: int | None = None, lr: float = 1e-5, weight_decay: float = 0.0,
                 warmup_ratio: float = 0.1, total_steps: int | None = None, kl_coef: float = KL_COEF,
                 loss_agg: str = "seq_mean", inactive_kl: float = 0.0, beta: float = BETA, lam: float = LAMBDA,
                 rae_alpha: float = RAE_ALPHA,
                 decision_reward: tuple[float, float, float] = (DECISION_REWARDS["correct"],
                                                                DECISION_REWARDS["abstain"],
                                                                DECISION_REWARDS["wrong"]),
                 decision: str = "civilians", observer_samples: int = 8, observer_reward: str = "paper",
                 phase: dict[str, Any] | None = None, lora: dict[str, Any] | None = None,
                 train_projector: bool | None = None, gradient_checkpointing: bool = False, adv_eps: float = 1e-6,
                 log_transcripts_every: int = 25, n_transcripts: int = 2, export_path: str | None = None,
                 num_threads: int | None = None, game_log: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_threads:  # on a shared 2-core machine one intra-op thread avoids OpenMP oversubscription
            torch.set_num_threads(int(num_threads))
        if policy_type not in ("embedding_vlm", "hf_vlm"):
            raise ValueError(f"policy_type must be 'embedding_vlm' or 'hf_vlm', got {policy_type!r}")
        if decision not in ("civilians", "observer"):
            raise ValueError(f"decision must be 'civilians' or 'observer', got {decision!r}")
        if observer_reward not in ("paper", "shaped"):
            raise ValueError(f"observer_reward must be 'paper' or 'shaped', got {observer_reward!r}")
        self.rae = RoleAdvantage(rae_alpha)
        self.phase_ctl = PhaseController(**(phase or {}))
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

    def ref_logprobs(self, gens) -> torch.Tensor:
        mb = self.hparams.logprob_micro_batch
        with torch.no_grad():
            if self.ref is not None:
                self.ref.eval()
                return self.policy.logprobs(gens, model=self.ref, micro_batch=mb)[0]
            with self.policy.reference_context():
                return self.policy.logprobs(gens, micro_batch=mb)[0]

    # -- data -------------------------------------------------------------------------------------
    def sample_transform(self):
        return None  # setups stay PIL images + JSON; the policy preprocesses what it needs

    # -- distributed helpers ------------------------------------------------------------------------
    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _all_reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self._world() > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return t.tolist()

    def _all_gather_objects(self, obj: Any) -> list[Any]:
        if self._world() > 1 and dist.is_available() and dist.is_initialized():
            out: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def _synced_gpus(self) -> bool:
        if self.hparams.synced_gpus is not None:
            return bool(self.hparams.synced_gpus)
        from train.core.strategies import zero_stage

        strategy = getattr(self._trainer, "strategy", None) if self._trainer is not None else None
        return bool(zero_stage(strategy) == 3 and self._world() > 1)

    # -- rollouts -----------------------------------------------------------------------------------
    def gen_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        clue = {"max_new_tokens": hp.clue_max_new_tokens}
        dec = {"max_new_tokens": hp.decision_max_new_tokens}
        if hp.fixed_length:
            clue["min_new_tokens"], dec["min_new_tokens"] = hp.clue_max_new_tokens, hp.decision_max_new_tokens
        return {"temperature": hp.temperature, "top_p": hp.top_p, "synced_gpus": self._synced_gpus(),
                "batch_size": hp.gen_batch_size, "clue": clue, "decision": dec}

    def play(self, setups: list[GameSetup]) -> tuple[list[GameRecord], dict[str, float]]:
        """Play ``setups`` with the current policy; returns records and rollout timing."""
        from train.visionzero.policy import generate_fn

        if hasattr(self.policy, "clear_cache"):
            self.policy.clear_cache()
        # Rollout sampling seeded by the games themselves: a resumed run replays the same rollouts.
        torch.manual_seed(sum(int(s.seed) for s in setups) % (2**63 - 1))
        t0 = time.perf_counter()
        records = play_games(setups, generate_fn(self.policy, **self.gen_kwargs()), prompts_path=self.hparams.prompts_path,
                             decision=self.hparams.decision, observer_samples=self.hparams.observer_samples)
        dt = time.perf_counter() - t0
        tokens = sum(len(pt.generation.data.response_ids) for r in records for pt in r.turns) + \
            sum(len(g.data.response_ids) for r in records for g in r.vote_generations)
        return records, {"rollout_s": dt, "tokens": float(tokens)}

    # -- advantages ---------------------------------------------------------------------------------
    def score(self, records: list[GameRecord]) -> dict[str, Any]:
        """Rewards -> advantages (RAE for clues, group-normalised for votes) + statistics."""
        from datagen.visionzero import clue_rewards, decision_rewards, observer_decision_rewards

        hp = self.hparams
        c, a, w = hp.decision_reward
        for rec in records:  # rewards with this run's hyperparameters
            s = rec.setup
            rec.clue_rewards = clue_rewards(rec.votes, s.spy, s.n_players, beta=hp.beta, lam=hp.lam)
            if hp.decision == "observer" and hp.observer_reward == "shaped":
                ok = [v is not None for v in rec.votes]
                rec.decision_rewards = observer_decision_rewards(rec.votes, s.spy, ok)
            else:
                rec.decision_rewards = decision_rewards(rec.votes, s.spy, correct=c, abstain=a, wrong=w)
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
        dec_adv = [group_normalize(rec.decision_rewards, eps=hp.adv_eps) for rec in records]
        return {"clue_adv": [clue_adv[i] for i in range(len(records))], "dec_adv": dec_adv}

    # -- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
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
        logp, mask = self.policy.logprobs(gens, micro_batch=hp.logprob_micro_batch)
        ref_logp = self.ref_logprobs(gens)
        a_t = torch.tensor(a, dtype=logp.dtype, device=logp.device)
        loss, parts = policy_loss(logp, ref_logp, mask, a_t, hp.kl_coef, hp.loss_agg)
        if hp.inactive_kl > 0:  # off-spec anchor of the other stage's outputs (see the class docstring)
            other = ([gen for r in records for gen in r.vote_generations] if phase == "clue"
                     else [pt.generation for r in records for pt in r.turns])
            if other:
                lp_o, m_o = self.policy.logprobs(other, micro_batch=hp.logprob_micro_batch)
                with torch.no_grad():
                    anchor_lp = self.policy.logprobs(other, model=self.phase_anchor(phase),
                                                     micro_batch=hp.logprob_micro_batch)[0]
                no_adv = torch.zeros(len(other), dtype=lp_o.dtype, device=lp_o.device)
                anchor, kl_parts = policy_loss(lp_o, anchor_lp, m_o, no_adv, hp.inactive_kl, hp.loss_agg)
                loss = loss + anchor
                parts["kl_inactive"] = kl_parts["kl"]

        # statistics pooled over ranks (the phase controller must be identical everywhere)
        n_votes = sum(len(r.votes) for r in records)
        spy_r = [r.clue_rewards[r.setup.spy - 1] for r in records]
        civ_r = [x for r in records for j, x in enumerate(r.clue_rewards, 1) if j != r.setup.spy]
        dec_r = [x for r in records for x in r.decision_rewards]
        zero_dec = sum(all(v == 0.0 for v in g) for g in adv["dec_adv"])
        zero_clue = sum(max(r.clue_rewards) == min(r.clue_rewards) for r in records)
        sums = self._all_reduce([
            n_votes, sum(r.n_correct for r in records), sum(r.n_na for r in records),
            sum(r.n_invalid for r in records), len(records), sum(spy_r), len(civ_r), sum(civ_r), sum(dec_r),
            zero_dec, zero_clue, timing["tokens"], timing["rollout_s"],
            sum(pt.format_ok for r in records for pt in r.turns), sum(len(r.turns) for r in records)])
        (nv, nc, nna, ninv, ng, s_spy, n_civ, s_civ, s_dec, z_dec, z_clue, tok, rs, fmt, nturns) = sums
        acc, na = nc / max(nv, 1), nna / max(nv, 1)
        next_phase = self.phase_ctl.step(acc, na)

        bs = len(records)
        metrics = {
            "phase": 1.0 if phase == "clue" else 0.0,
            "game/accuracy": acc, "game/na_rate": na, "game/invalid_rate": ninv / max(nv, 1),
            "game/clue_format_ok": fmt / max(nturns, 1),
            "reward/clue_spy": s_spy / max(ng, 1), "reward/clue_civilian": s_civ / max(n_civ, 1),
            "reward/decision": s_dec / max(nv, 1),
            "rae/b_spy": self.rae.b_spy, "rae/b_civ": self.rae.b_civ,
            "phase/acc_ema": self.phase_ctl.history[-1]["acc_ema"], "phase/na_ema": self.phase_ctl.history[-1]["na_ema"],
            "adv/zero_var_frac_decision": z_dec / max(ng, 1), "adv/zero_var_frac_clue": z_clue / max(ng, 1),
            "adv/mean_abs": float(a_t.abs().mean()) if len(a) else 0.0,
            "loss/pg": parts["pg"], "loss/kl": parts["kl"], "loss/kl_inactive": parts.get("kl_inactive", 0.0),
            "perf/tokens_per_s": tok / max(rs / max(self._world(), 1), 1e-9),
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
        params = [p for p in self.vlm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.hparams.total_steps or self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("VisionZeroSelfPlay: set model.total_steps or trainer.max_steps")
        warm = int(round(self.hparams.warmup_ratio * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

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
        out_dir = Path(self.trainer.log_dir or ".")  # a collective under DDP: every rank must ask
        if not self.trainer.is_global_zero:
            return
        hist = {"history": self.phase_ctl.history, "rae": self.rae.state_dict()}
        (out_dir / "phase_history.json").write_text(json.dumps(hist, indent=1))
        if self.hparams.export_path:
            if is_deepspeed(self.trainer.strategy):
                log.warning("DeepSpeed: parameters may be partitioned; export from the checkpoint instead "
                            "(see docs/visionzero.md)")
                return
            export = Path(self.hparams.export_path)
            if hasattr(self.vlm, "save_pretrained"):
                self.vlm.save_pretrained(export)
            (export / "phase_history.json").write_text(json.dumps(hist, indent=1))
            self.print(f"trained policy: {export}")
