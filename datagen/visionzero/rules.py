"""Pure game rules of Vision-Zero's "Who is the spy?": vote parsing, vote counts, rewards, outcomes.

Source: ``docs/specs/visionzero.md`` (Vision-Zero, arXiv 2509.25541). The paper's algorithm is the
default everywhere; the released code's variants are options (named below). Seats are 1-based
everywhere (seat ``k`` is "Player k"); per-seat lists are 0-based (index 0 = seat 1).

A parsed vote is an ``int`` seat in ``1..N``, the string ``"N/A"`` (abstain) or ``None`` (invalid).
Nothing here touches torch or a model: these functions are the verifiable part of the game and are
unit-tested by hand-computed examples (``tests/test_visionzero_rules.py``).

The rewards are game rules too: the zero-sum clue reward and the decision reward are fixed functions
of one game's votes (who voted for whom), like its outcome, with no learning state. What the trainer
makes of them -- group normalisation, Role Advantage Estimation, the Iterative-SPO phase switch -- is
training logic and lives in :mod:`train.visionzero.advantage` and :mod:`train.visionzero.phase`; the
run's reward settings are :class:`train.visionzero.config.RewardConfig`, applied in one place
(:func:`train.visionzero.engine.score_game`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

NA = "N/A"
Vote = int | str | None

# --- reward constants (spec "Rewards") -----------------------------------------------------------------
BETA = 0.1  # clue reward: weight of the spy-vs-civilians vote gap
LAMBDA = 0.1  # clue reward: penalty on a civilian drawing more votes than the civilian mean
DECISION_REWARDS = {"correct": 1.0, "abstain": -0.5, "wrong": -1.0}

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
    then group-normalises the G rewards (:func:`train.visionzero.advantage.group_normalize`).
    """
    if len(samples) != len(format_ok):
        raise ValueError(f"{len(samples)} samples but {len(format_ok)} format flags")
    out = []
    for v, ok in zip(samples, format_ok):
        acc = 1.0 if (isinstance(v, int) and not isinstance(v, bool) and v == spy) else 0.0
        out.append(0.3 * (2 * float(bool(ok)) - 1) + 1.2 * acc + 0.99 * float(acc > 0))
    return out


# --- vote statistics ---------------------------------------------------------------------------------
def vote_stats(games: Iterable[tuple[Sequence[Vote], int]]) -> tuple[float, float]:
    """Pooled ``(accuracy, N/A rate)`` over all votes of an iteration's ``(votes, spy)`` games.

    The phase switch's input (:class:`train.visionzero.phase.PhaseController`). Invalid votes count as wrong (the denominator is every vote cast). No votes -> ``(0.0, 0.0)``.
    """
    n = correct = na = 0
    for votes, spy in games:
        for v in votes:
            n += 1
            correct += isinstance(v, int) and not isinstance(v, bool) and v == spy
            na += v == NA
    return (correct / n, na / n) if n else (0.0, 0.0)


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
