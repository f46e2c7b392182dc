"""Pure game rules of Vision-Zero's "Who is the spy?": vote parsing, rewards, advantages, phase control.

Source: ``shared/methods/visionzero.md`` (Vision-Zero, arXiv 2509.25541). The paper's algorithm is the
default everywhere; the released code's variants are options (named below). Seats are 1-based
everywhere (seat ``k`` is "Player k"); per-seat lists are 0-based (index 0 = seat 1).

A parsed vote is an ``int`` seat in ``1..N``, the string ``"N/A"`` (abstain) or ``None`` (invalid).
Nothing here touches torch or a model: these functions are the verifiable part of the game and are
unit-tested by hand-computed examples (``tests/test_visionzero_rules.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

NA = "N/A"
Vote = int | str | None

# --- hyperparameters (spec "Rewards" and "Optimisation" sections) ------------------------------------
BETA = 0.1  # clue reward: weight of the spy-vs-civilians vote gap
LAMBDA = 0.1  # clue reward: penalty on a civilian drawing more votes than the civilian mean
RAE_ALPHA = 0.95  # Role Advantage Estimation baseline decay (released code: 0.9)
DECISION_REWARDS = {"correct": 1.0, "abstain": -0.5, "wrong": -1.0}
PHASE_RHO = 0.95  # EMA decay of decision accuracy / N/A rate, both start at 0
TO_CLUE_ACC, TO_CLUE_NA = 0.9, 0.1  # decision -> clue when acc >= 0.9 and N/A <= 0.1 (spy too easy)
TO_DEC_ERR, TO_DEC_NA = 0.4, 0.5  # clue -> decision when error >= 0.4 or N/A >= 0.5 (spy too hard)
K_MIN, PATIENCE = 5, 20  # minimum stay in a phase; forced switch after this many iterations

# --- vote parsing ------------------------------------------------------------------------------------
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_LATEX_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\s*")
_NA = re.compile(r"n\s*/?\s*a", re.I)
# First number token; the look-behind keeps it standalone ("12" is never read as "2"), the optional
# fraction lets "2.5" be seen (and rejected) instead of being read as seat 2.
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` in ``text``, matching nested braces (unclosed ones are skipped)."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1])
    return out


def parse_vote(text: str, n_players: int) -> Vote:
    """Parse a vote: a seat in ``1..n_players``, ``"N/A"`` (abstain) or ``None`` (invalid).

    Spec ("Vote parsing"): take the content of ``\\boxed{...}``, falling back to ``<answer>...</answer>``;
    "N/A"/"NA" (any case, optional ``\\text{}`` wrapper and trailing full stop) abstains; otherwise the
    first standalone number must be an integer in 1..N ("Player 3" -> 3; "player 12" with N=5, "0",
    "2.5" -> invalid); anything else is invalid.

    The *last* box (resp. answer tag) is used: a model states its final answer last, and reasoning may
    quote earlier boxes (the clues are boxed too). Nested braces are matched (``\\boxed{\\text{3}}``).
    The number is searched only inside the box, never in the free text, so a missing box is invalid.
    """
    if not isinstance(text, str):
        return None
    boxes = _boxed_contents(text)
    if boxes:
        content = boxes[-1]
    else:
        answers = _ANSWER.findall(text)
        if not answers:
            return None
        content = answers[-1]
    content = _LATEX_WRAP.sub("", content).replace("{", " ").replace("}", " ").strip().rstrip(".").strip()
    if _NA.fullmatch(content) or _NA.fullmatch(re.sub(r"(?i)^player\s*", "", content)):
        return NA
    m = _NUMBER.search(content)
    if m is None or "." in m.group():
        return None
    k = int(m.group())
    return k if 1 <= k <= n_players else None


def _is_seat(v: Vote, n_players: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= n_players


def vote_counts(votes: Iterable[Vote], n_players: int) -> list[int]:
    """Votes received per seat (index 0 = seat 1); N/A, invalid and out-of-range votes count for nobody."""
    counts = [0] * n_players
    for v in votes:
        if _is_seat(v, n_players):
            counts[v - 1] += 1
    return counts


def _check_spy(spy: int, n_players: int) -> None:
    if n_players < 2 or not _is_seat(spy, n_players):
        raise ValueError(f"spy seat {spy!r} must be in 1..n_players (n_players={n_players} >= 2)")


# --- rewards -----------------------------------------------------------------------------------------
def clue_rewards(votes: Sequence[Vote], spy: int, n_players: int, beta: float = BETA,
                 lam: float = LAMBDA) -> list[float]:
    """Zero-sum clue-stage rewards, one per seat (index 0 = seat 1).

    Spec ("Rewards"), with v_s = votes for the spy, v_cj = votes for civilian j, v̄_c = mean over the
    n_c = N - 1 civilians::

        r_spy = -β (v_s - v̄_c)
        r_cj  = (β / n_c)(v_s - v̄_c) - λ (v_cj - v̄_c)

    Σ_j r_cj = β (v_s - v̄_c) - λ (Σ_j v_cj - n_c v̄_c) = -r_spy, so the game is zero-sum.
    """
    _check_spy(spy, n_players)
    counts = vote_counts(votes, n_players)
    civ = [s for s in range(1, n_players + 1) if s != spy]
    n_c = len(civ)
    v_s = counts[spy - 1]
    v_bar = sum(counts[s - 1] for s in civ) / n_c
    gap = v_s - v_bar
    rewards = [0.0] * n_players
    rewards[spy - 1] = -beta * gap
    for s in civ:
        rewards[s - 1] = beta / n_c * gap - lam * (counts[s - 1] - v_bar)
    return rewards


def decision_rewards(votes: Sequence[Vote], spy: int, correct: float = DECISION_REWARDS["correct"],
                     abstain: float = DECISION_REWARDS["abstain"],
                     wrong: float = DECISION_REWARDS["wrong"]) -> list[float]:
    """Per-voter decision reward (spec): +1 names the spy, -0.5 for ``"N/A"``, -1 wrong or invalid."""
    return [correct if (isinstance(v, int) and not isinstance(v, bool) and v == spy)
            else abstain if v == NA else wrong for v in votes]


def observer_decision_rewards(samples: Sequence[Vote], spy: int, format_ok: Sequence[bool]) -> list[float]:
    """Released-code option: shaped reward of the G observer samples (each sample is one parsed vote).

    r = 0.3·(2·format_ok − 1) + 1.2·acc + 0.99·[acc > 0], acc = 1 if the sample names the spy else 0
    (so a correct, well-formatted answer earns 2.49 and a malformed wrong one -0.3). The released code
    then group-normalises the G rewards (:func:`group_normalize`).
    """
    if len(samples) != len(format_ok):
        raise ValueError(f"{len(samples)} samples but {len(format_ok)} format flags")
    out = []
    for v, ok in zip(samples, format_ok):
        acc = 1.0 if (isinstance(v, int) and not isinstance(v, bool) and v == spy) else 0.0
        out.append(0.3 * (2 * float(bool(ok)) - 1) + 1.2 * acc + 0.99 * float(acc > 0))
    return out


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


# --- role advantage estimation -----------------------------------------------------------------------
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


# --- Iterative-SPO phase control ---------------------------------------------------------------------
def vote_stats(games: Iterable[tuple[Sequence[Vote], int]]) -> tuple[float, float]:
    """Pooled ``(accuracy, N/A rate)`` over all votes of an iteration's ``(votes, spy)`` games.

    Invalid votes count as wrong (the denominator is every vote cast). No votes -> ``(0.0, 0.0)``.
    """
    n = correct = na = 0
    for votes, spy in games:
        for v in votes:
            n += 1
            correct += isinstance(v, int) and not isinstance(v, bool) and v == spy
            na += v == NA
    return (correct / n, na / n) if n else (0.0, 0.0)


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


# --- evaluation --------------------------------------------------------------------------------------
def civilians_win(votes: Sequence[Vote], spy: int, n_players: int, rule: str = "majority") -> bool:
    """Outcome of one game: True when the civilians win.

    ``rule="majority"`` (default): the spy gets MORE than half of the valid votes (seat votes in range;
    N/A and invalid votes are left out of the count). ``rule="plurality"``: the spy alone has the most
    votes. Ties (exactly half, or the spy sharing the top count) and games without a valid vote are
    wins for the spy: it was not identified, which is its goal.
    """
    _check_spy(spy, n_players)
    if rule not in ("majority", "plurality"):
        raise ValueError(f"rule must be 'majority' or 'plurality', got {rule!r}")
    counts = vote_counts(votes, n_players)
    total, v_s = sum(counts), counts[spy - 1]
    if total == 0:
        return False
    if rule == "majority":
        return 2 * v_s > total
    return all(v_s > c for s, c in enumerate(counts, 1) if s != spy)


def win_rate(games: Iterable[tuple[Sequence[Vote], int]], n_players: int, side: str = "civilians",
             rule: str = "majority") -> float:
    """Fraction of ``(votes, spy)`` games won by ``side`` ("civilians" or "spy"); see :func:`civilians_win`."""
    if side not in ("civilians", "spy"):
        raise ValueError(f"side must be 'civilians' or 'spy', got {side!r}")
    outcomes = [civilians_win(v, s, n_players, rule) for v, s in games]
    if not outcomes:
        raise ValueError("win_rate of no games is undefined")
    civ = sum(outcomes) / len(outcomes)
    return civ if side == "civilians" else 1.0 - civ
