"""Iterative Self-Play Policy Optimization: the phase controller that picks the stage trained next.

Spec: ``docs/specs/visionzero.md`` ("Optimisation"). Training logic driven by the game's vote statistics
(:func:`datagen.visionzero.rules.vote_stats`); pure Python, no torch, unit-tested in
``tests/test_visionzero_rules.py``. Its settings are :class:`train.visionzero.config.PhaseConfig`.
"""

from __future__ import annotations

PHASE_RHO = 0.95  # EMA decay of decision accuracy / N/A rate, both start at 0
TO_CLUE_ACC, TO_CLUE_NA = 0.9, 0.1  # decision -> clue when acc >= 0.9 and N/A <= 0.1 (spy too easy)
TO_DEC_ERR, TO_DEC_NA = 0.4, 0.5  # clue -> decision when error >= 0.4 or N/A >= 0.5 (spy too hard)
K_MIN, PATIENCE = 5, 20  # minimum stay in a phase; forced switch after this many iterations

__all__ = ["K_MIN", "PATIENCE", "PHASE_RHO", "PhaseController", "TO_CLUE_ACC", "TO_CLUE_NA", "TO_DEC_ERR",
           "TO_DEC_NA"]


class PhaseController:
    """Iterative Self-Play Policy Optimization: which stage (``"clue"`` or ``"decision"``) trains next.

    Spec ("Optimisation"), ``mode="hysteresis"`` (default). :meth:`step` is called once per iteration
    with that iteration's decision accuracy and N/A rate, in this exact order:

    1. EMAs (ρ = 0.95, both start at 0, no bias correction unless ``debias``):
       acc_ema ← ρ acc_ema + (1−ρ) acc;  na_ema ← ρ na_ema + (1−ρ) na_rate;
    2. the iteration just played counts towards the current phase (``steps_in_phase += 1``);
    3. if steps_in_phase ≥ K_min (5): decision → clue when acc_ema ≥ 0.9 and na_ema ≤ 0.1;
       clue → decision when (1 − acc_ema) ≥ 0.4 or na_ema ≥ 0.5;
    4. otherwise, if no switch and steps_in_phase ≥ P (20), switch anyway (patience);
    5. return the phase of the NEXT iteration.

    Note: started at 0 without bias correction, acc_ema needs ≥ 45 perfect iterations to reach 0.9
    (1 − 0.95^45 ≈ 0.90), so early on the patience rule is what leaves the decision phase.

    ``mode="alternate"`` (released code) switches after every iteration; EMAs are still tracked.
    ``history`` holds one JSON-able record per step for plotting.
    """

    PHASES = ("decision", "clue")

    def __init__(self, mode: str = "hysteresis", rho: float = PHASE_RHO, to_clue_acc: float = TO_CLUE_ACC,
                 to_clue_na: float = TO_CLUE_NA, to_decision_err: float = TO_DEC_ERR,
                 to_decision_na: float = TO_DEC_NA, k_min: int = K_MIN, patience: int = PATIENCE,
                 start: str = "decision", debias: bool = False) -> None:
        if mode not in ("hysteresis", "alternate"):
            raise ValueError(f"mode must be 'hysteresis' or 'alternate', got {mode!r}")
        if start not in self.PHASES:
            raise ValueError(f"start must be one of {self.PHASES}, got {start!r}")
        if not 1 <= k_min <= patience:
            raise ValueError(f"need 1 <= k_min <= patience, got k_min={k_min}, patience={patience}")
        self.mode, self.rho, self.debias = mode, float(rho), bool(debias)
        self.to_clue_acc, self.to_clue_na = float(to_clue_acc), float(to_clue_na)
        self.to_decision_err, self.to_decision_na = float(to_decision_err), float(to_decision_na)
        self.k_min, self.patience = int(k_min), int(patience)
        self.phase = start
        self.acc_ema = 0.0
        self.na_ema = 0.0
        self.steps_in_phase = 0
        self.iteration = 0
        self.history: list[dict] = []

    def _emas(self) -> tuple[float, float]:
        """The EMAs used for decisions (bias-corrected as in Adam when ``debias``)."""
        if not self.debias or self.iteration == 0:
            return self.acc_ema, self.na_ema
        c = 1.0 - self.rho ** self.iteration
        return self.acc_ema / c, self.na_ema / c

    def step(self, acc: float, na_rate: float) -> str:
        """Record one iteration's decision accuracy and N/A rate; return the phase of the next iteration."""
        played = self.phase
        self.acc_ema = self.rho * self.acc_ema + (1 - self.rho) * float(acc)
        self.na_ema = self.rho * self.na_ema + (1 - self.rho) * float(na_rate)
        self.iteration += 1
        self.steps_in_phase += 1
        acc_e, na_e = self._emas()
        reason = None
        if self.mode == "alternate":
            reason = "alternate"
        elif self.steps_in_phase >= self.k_min:
            if played == "decision" and acc_e >= self.to_clue_acc and na_e <= self.to_clue_na:
                reason = "threshold"
            elif played == "clue" and (1 - acc_e >= self.to_decision_err or na_e >= self.to_decision_na):
                reason = "threshold"
            elif self.steps_in_phase >= self.patience:
                reason = "patience"
        if reason is not None:
            self.phase = "clue" if played == "decision" else "decision"
            self.steps_in_phase = 0
        self.history.append({"iteration": self.iteration, "phase": played, "acc": float(acc),
                             "na_rate": float(na_rate), "acc_ema": acc_e, "na_ema": na_e,
                             "next_phase": self.phase, "switch": reason})
        return self.phase

    @property
    def clue_weight(self) -> float:
        """m in the loss m·L_clue + (1−m)·L_dec for the current phase."""
        return 1.0 if self.phase == "clue" else 0.0

    def state_dict(self) -> dict:
        return {"phase": self.phase, "acc_ema": self.acc_ema, "na_ema": self.na_ema,
                "steps_in_phase": self.steps_in_phase, "iteration": self.iteration,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the running state (hyperparameters and mode stay as constructed)."""
        if state["phase"] not in self.PHASES:
            raise ValueError(f"bad phase {state['phase']!r} in state")
        self.phase = state["phase"]
        self.acc_ema, self.na_ema = float(state["acc_ema"]), float(state["na_ema"])
        self.steps_in_phase, self.iteration = int(state["steps_in_phase"]), int(state["iteration"])
        self.history = [dict(h) for h in state.get("history", [])]
