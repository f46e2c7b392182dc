"""Vision-Zero advantages: group normalisation (decision stage) and Role Advantage Estimation (clue stage).

Spec: ``docs/specs/visionzero.md`` ("Optimisation"). Training logic on top of the game's rewards
(:mod:`datagen.visionzero.rules`); pure Python, no torch, unit-tested by hand-computed examples
(``tests/test_visionzero_rules.py``). :class:`train.visionzero.module.VisionZeroSelfPlay` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RAE_ALPHA = 0.95  # Role Advantage Estimation baseline decay (released code: 0.9)

__all__ = ["RAE_ALPHA", "RoleAdvantage", "group_normalize"]


def group_normalize(rewards: Sequence[float], eps: float = 1e-6, ddof: int = 0) -> list[float]:
    """Group-relative advantages within one game: (r − mean) / (std + ε).

    ``ddof=0`` (default) is the population std: defined for a single voter (gives 0), and the
    normalised group has unit variance exactly. TRL's GRPO uses ``torch.std`` (unbiased, ``ddof=1``);
    pass ``ddof=1`` to match it. For a fixed group size the two differ by the constant factor
    sqrt((n−1)/n), i.e. a rescaled learning rate. A group whose rewards are all equal has no signal and
    returns exact zeros (no NaN, no 1e-11 rounding residue).
    """
    r = [float(x) for x in rewards]
    n = len(r)
    if n == 0:
        return []
    if max(r) == min(r) or n - ddof <= 0:
        return [0.0] * n
    mean = sum(r) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - ddof))
    return [(x - mean) / (std + eps) for x in r]


class RoleAdvantage:
    """Role Advantage Estimation (RAE) for the clue stage: one running baseline per role.

    Spec: b_spy ← α b_spy + (1−α) r_spy and b_civ ← α b_civ + (1−α) mean_j r_cj, α = 0.95, both start
    at 0 and are updated *before* the advantage is taken; A = r − b_role, with no further normalisation.
    Use :meth:`step` per game (update, then advantages), or :meth:`update` and :meth:`advantages` apart.
    """

    def __init__(self, alpha: float = RAE_ALPHA) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.b_spy = 0.0
        self.b_civ = 0.0
        self.n_updates = 0

    def update(self, r_spy: float, civ_rewards: Sequence[float]) -> None:
        """Fold one game's rewards into both baselines."""
        if not civ_rewards:
            raise ValueError("civ_rewards is empty: a game has at least one civilian")
        a = self.alpha
        self.b_spy = a * self.b_spy + (1 - a) * float(r_spy)
        self.b_civ = a * self.b_civ + (1 - a) * (sum(map(float, civ_rewards)) / len(civ_rewards))
        self.n_updates += 1

    def advantages(self, r_spy: float, civ_rewards: Sequence[float]) -> tuple[float, list[float]]:
        """``(r_spy − b_spy, [r_cj − b_civ, ...])`` against the current baselines (no update)."""
        return float(r_spy) - self.b_spy, [float(r) - self.b_civ for r in civ_rewards]

    def step(self, r_spy: float, civ_rewards: Sequence[float]) -> tuple[float, list[float]]:
        """The spec's order for one game: update the baselines, then take the advantages."""
        self.update(r_spy, civ_rewards)
        return self.advantages(r_spy, civ_rewards)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "b_spy": self.b_spy, "b_civ": self.b_civ, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore the baselines (``alpha`` stays as constructed: it is configuration, not state)."""
        self.b_spy, self.b_civ = float(state["b_spy"]), float(state["b_civ"])
        self.n_updates = int(state.get("n_updates", 0))
