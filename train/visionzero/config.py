"""The typed config sections of :class:`train.visionzero.module.VisionZeroSelfPlay` (YAML ``model.init_args``).

Four frozen dataclasses that jsonargparse / LightningCLI parse from YAML and check key by key::

    model:
      class_path: train.visionzero.VisionZeroSelfPlay
      init_args:
        generation: {temperature: 1.0, clue_max_new_tokens: 16, decision_max_new_tokens: 8}
        loss: {kl_coef: 0.04, inactive_kl: 1.0}
        rewards: {beta: 0.1, lam: 0.1}
        phase: {mode: hysteresis, k_min: 5, patience: 20}

A section given in part keeps the defaults (the paper's values, spec ``docs/specs/visionzero.md``) for
the fields it leaves out; one field can be overridden on the command line
(``--model.init_args.generation.temperature=0.8``). In Python, each section may also be passed as a
plain dict (:func:`coerce`). Pure Python, no torch: ``synthloop visionzero-eval`` reads a run's
``generation`` and ``rewards`` sections without importing the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from datagen.visionzero.rules import BETA, DECISION_REWARDS, LAMBDA
from train.visionzero.advantage import RAE_ALPHA
from train.visionzero.phase import K_MIN, PATIENCE, PHASE_RHO, TO_CLUE_ACC, TO_CLUE_NA, TO_DEC_ERR, TO_DEC_NA

KL_COEF = 0.04  # spec: τ
DECISION_MODES = ("civilians", "observer")

__all__ = ["DECISION_MODES", "GenerationConfig", "KL_COEF", "LossConfig", "PhaseConfig", "RewardConfig", "coerce"]


@dataclass(frozen=True)
class GenerationConfig:
    """How the games are played: sampling, generation budgets, batching, who votes.

    Args:
        temperature: sampling temperature of every clue and vote (spec: ≈ 0.8).
        top_p: nucleus-sampling threshold (1.0 = off).
        clue_max_new_tokens: generation budget of one clue turn (reasoning + boxed clue).
        decision_max_new_tokens: generation budget of one vote.
        fixed_length: ``min_new_tokens = max_new_tokens``: every turn decodes its full budget (a fixed
            number of generation steps, e.g. for throughput measurements).
        synced_gpus: keep ranks stepping together during generation; ``None`` = on under DeepSpeed
            ZeRO-3 with several processes, off otherwise.
        batch_size: split the generation of one turn into batches of this many requests (``None`` = all
            games of the step in one ``generate`` call).
        decision: who votes: ``"civilians"`` (paper: every civilian votes once) or ``"observer"`` (released
            code: one observer prompt with the civilians' image, sampled ``observer_samples`` times).
        observer_samples: votes sampled per game with ``decision="observer"``.
    """

    temperature: float = 0.8
    top_p: float = 1.0
    clue_max_new_tokens: int = 24
    decision_max_new_tokens: int = 8
    fixed_length: bool = False
    synced_gpus: bool | None = None
    batch_size: int | None = None
    decision: str = "civilians"
    observer_samples: int = 8

    def __post_init__(self) -> None:
        if self.decision not in DECISION_MODES:
            raise ValueError(f"generation.decision must be one of {DECISION_MODES}, got {self.decision!r}")


@dataclass(frozen=True)
class LossConfig:
    """The training objective: advantages, the KL anchor, loss aggregation.

    Args:
        kl_coef: τ, weight of the k3 KL(π_θ ‖ π_ref) per generated token (spec: 0.04).
        agg: ``"seq_mean"`` (GRPO's: mean over each sequence's tokens, then over sequences) or
            ``"token_mean"`` (one mean over every generated token of the step).
        inactive_kl: NOT in the spec (0 = the paper): also anchor the INACTIVE stage's outputs of the
            step (the clues while the decision stage trains, the votes while the clue stage trains) with
            this weight × the same k3 KL, no policy-gradient term, to a frozen snapshot of the policy
            taken when the current phase began (so the anchor keeps the other stage where it was and
            never pulls it back to π_ref). For small policies whose clue and vote outputs share most
            weights (``docs/visionzero.md``, "stage interference"). Not under DeepSpeed.
        rae_alpha: decay α of the Role Advantage Estimation baselines of the clue stage (spec: 0.95;
            released code: 0.9).
        adv_eps: ε of the decision stage's group normalisation (r − mean) / (std + ε).
        logprob_micro_batch: split the log-prob forwards (policy and π_ref) into micro-batches of this many
            sequences (``None`` = one forward for the step).
    """

    kl_coef: float = KL_COEF
    agg: str = "seq_mean"
    inactive_kl: float = 0.0
    rae_alpha: float = RAE_ALPHA
    adv_eps: float = 1e-6
    logprob_micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.agg not in ("seq_mean", "token_mean"):
            raise ValueError(f"loss.agg must be 'seq_mean' or 'token_mean', got {self.agg!r}")


@dataclass(frozen=True)
class RewardConfig:
    """The rewards of a played game, applied by :func:`train.visionzero.engine.score_game` (training and evaluation).

    Args:
        beta: β of the zero-sum clue reward, weight of the spy-vs-civilians vote gap (spec: 0.1).
        lam: λ of the clue reward, penalty on a civilian drawing more votes than the civilian mean (spec: 0.1).
        correct: decision reward of a vote naming the spy (spec: +1).
        abstain: decision reward of an ``"N/A"`` vote (spec: −0.5).
        wrong: decision reward of a wrong or invalid vote (spec: −1).
        observer: decision reward of observer games (``generation.decision="observer"``): ``"paper"`` (the
            three values above) or ``"shaped"`` (the released code's 0.3·format + 1.2·acc + 0.99·[acc > 0]).
    """

    beta: float = BETA
    lam: float = LAMBDA
    correct: float = DECISION_REWARDS["correct"]
    abstain: float = DECISION_REWARDS["abstain"]
    wrong: float = DECISION_REWARDS["wrong"]
    observer: str = "paper"

    def __post_init__(self) -> None:
        if self.observer not in ("paper", "shaped"):
            raise ValueError(f"rewards.observer must be 'paper' or 'shaped', got {self.observer!r}")


@dataclass(frozen=True)
class PhaseConfig:
    """The Iterative-SPO phase controller (:class:`train.visionzero.phase.PhaseController`).

    Args:
        mode: ``"hysteresis"`` (spec: switch on the thresholds below) or ``"alternate"`` (released code:
            switch after every iteration).
        rho: EMA decay ρ of the decision accuracy and N/A rate (spec: 0.95; both EMAs start at 0).
        to_clue_acc: decision → clue when the accuracy EMA is at least this (spec: 0.9) ...
        to_clue_na: ... and the N/A EMA at most this (spec: 0.1).
        to_decision_err: clue → decision when the error EMA (1 − accuracy) is at least this (spec: 0.4) ...
        to_decision_na: ... or the N/A EMA at least this (spec: 0.5).
        k_min: minimum number of iterations in a phase before a threshold switch (spec: 5).
        patience: switch anyway after this many iterations in a phase (spec: 20).
        start: the phase of the first iteration (``"decision"`` or ``"clue"``).
        debias: bias-correct the EMAs as Adam does (not in the spec).
    """

    mode: str = "hysteresis"
    rho: float = PHASE_RHO
    to_clue_acc: float = TO_CLUE_ACC
    to_clue_na: float = TO_CLUE_NA
    to_decision_err: float = TO_DEC_ERR
    to_decision_na: float = TO_DEC_NA
    k_min: int = K_MIN
    patience: int = PATIENCE
    start: str = "decision"
    debias: bool = False


T = TypeVar("T")


def coerce(cls: type[T], value: T | dict[str, Any] | None, name: str) -> T:
    """``value`` as a ``cls`` section: ``None`` -> defaults, a dict -> ``cls(**dict)`` (unknown keys named)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        bad = sorted(set(value) - known)
        if bad:
            raise ValueError(f"{name}: unknown key(s) {bad}; known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
