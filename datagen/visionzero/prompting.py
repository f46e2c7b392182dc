"""Prompt rendering for Vision-Zero games, with the spec's visibility rules enforced.

Spec ("Game"): players speak in a fixed order (seat 1..N in every round); each writes private
reasoning, then a one-sentence clue in ``\\boxed{...}``. A player sees every *earlier* public clue
and its *own* earlier reasoning, never another player's reasoning. Turn ``(r', s')`` is earlier than
``(r, s)`` iff ``r' < r`` or ``r' == r and s' < s``.

The renderers take the game's transcript as it stands and refuse (ValueError) anything the speaking
player must not see: a clue not spoken yet, reasoning of another seat, reasoning from a later turn.
Only the ``clue`` field of public turns is ever rendered, so passing the full transcript (reasoning
included) cannot leak. :func:`visible_view` cuts a full transcript down to what a player may see.

Templates live in ``configs/visionzero/prompts/game.yaml``; the player's image is attached by the
caller (``setup.image_for(seat)``), one image per prompt.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from .setups import GameSetup

DEFAULT_PROMPTS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "visionzero", "prompts",
                               "game.yaml")
_REQUIRED = ("clue", "decision", "observer", "clue_line", "no_clues", "reasoning_line", "no_reasoning")


@dataclass(frozen=True)
class Turn:
    """One clue-stage turn: ``clue`` is public, ``reasoning`` is private to ``seat``."""

    seat: int
    round: int
    clue: str
    reasoning: str = ""


@functools.lru_cache(maxsize=8)
def load_prompts(path: str | None = None) -> dict:
    """The prompt templates (cached per path); raises naming the file when it is missing or incomplete."""
    path = os.path.abspath(path or DEFAULT_PROMPTS)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Vision-Zero prompt file not found: {path}")
    with open(path, encoding="utf-8") as f:
        prompts = yaml.safe_load(f)
    missing = [k for k in _REQUIRED if k not in prompts] + [
        f"clue.{k}" for k in ("civilian", "spy") if k not in prompts.get("clue", {})]
    if missing:
        raise ValueError(f"{path}: missing prompt keys {missing}")
    return prompts


def _as_turn(t: Turn | dict) -> Turn:
    if isinstance(t, Turn):
        return t
    return Turn(seat=int(t["seat"]), round=int(t["round"]), clue=str(t["clue"]), reasoning=str(t.get("reasoning", "")))


def _earlier(t: Turn, rnd: int, seat: int) -> bool:
    return t.round < rnd or (t.round == rnd and t.seat < seat)


def visible_view(transcript: Sequence[Turn | dict], seat: int, rnd: int) -> tuple[list[Turn], list[str]]:
    """What ``seat`` may see when it speaks in round ``rnd``: ``(earlier public turns, own earlier reasoning)``.

    For the decision stage pass ``rnd = rounds + 1`` (every clue is then earlier)."""
    turns = sorted((_as_turn(t) for t in transcript), key=lambda t: (t.round, t.seat))
    public = [t for t in turns if _earlier(t, rnd, seat)]
    own = [t.reasoning for t in public if t.seat == seat]
    return public, own


def _check_view(setup: GameSetup, seat: int, rnd: int, public_clues: Sequence[Turn | dict],
                own_reasoning: Sequence[str | Turn | dict]) -> tuple[list[Turn], list[tuple[int, str]]]:
    """Validate visibility; return sorted public turns and ``(round, text)`` of own reasoning."""
    turns = sorted((_as_turn(t) for t in public_clues), key=lambda t: (t.round, t.seat))
    for t in turns:
        if not 1 <= t.seat <= setup.n_players or not 1 <= t.round <= setup.rounds:
            raise ValueError(f"turn of seat {t.seat}, round {t.round} is outside the game "
                             f"({setup.n_players} players, {setup.rounds} rounds)")
        if not _earlier(t, rnd, seat):
            raise ValueError(f"player {seat} speaking in round {rnd} cannot see the clue of player {t.seat} "
                             f"in round {t.round}: it has not been spoken yet")
    seen = {(t.round, t.seat) for t in turns}
    if len(seen) != len(turns):
        raise ValueError("public_clues holds two clues of the same player in the same round")
    own: list[tuple[int, str]] = []
    for i, r in enumerate(own_reasoning):
        if isinstance(r, str):
            own.append((i + 1, r))  # plain strings: one per earlier own round, in order
            continue
        t = _as_turn(r)
        if t.seat != seat:
            raise ValueError(f"player {seat} must never see the reasoning of player {t.seat}")
        own.append((t.round, t.reasoning))
    for r, _ in own:
        if not _earlier(Turn(seat, r, ""), rnd, seat):
            raise ValueError(f"player {seat} in round {rnd} has no own reasoning from round {r} yet")
    return turns, own


def _history(prompts: dict, turns: list[Turn], own: list[tuple[int, str]]) -> tuple[str, str]:
    clues = "\n".join(prompts["clue_line"].format(seat=t.seat, round=t.round, clue=t.clue.strip()) for t in turns)
    reasoning = "\n".join(prompts["reasoning_line"].format(round=r, reasoning=x.strip()) for r, x in own)
    return clues or prompts["no_clues"], reasoning or prompts["no_reasoning"]


def render_clue_prompt(setup: GameSetup, seat: int, round: int, public_clues: Sequence[Turn | dict] = (),
                       own_reasoning: Sequence[str | Turn | dict] = (), prompts_path: str | None = None) -> str:
    """Clue-stage prompt of player ``seat`` in round ``round`` (1-based); the spy gets the spy variant.

    ``public_clues``: turns already spoken (only their clue text is shown); ``own_reasoning``: this
    player's earlier reasoning, as strings (one per earlier round) or as its own turns.
    """
    setup.is_spy(seat)  # validates the seat
    if not 1 <= round <= setup.rounds:
        raise ValueError(f"round {round} is not in 1..{setup.rounds}")
    turns, own = _check_view(setup, seat, round, public_clues, own_reasoning)
    prompts = load_prompts(prompts_path)
    clues, reasoning = _history(prompts, turns, own)
    template = prompts["clue"]["spy" if setup.is_spy(seat) else "civilian"]
    return template.format(seat=seat, n_players=setup.n_players, round=round, rounds=setup.rounds,
                           clues=clues, own_reasoning=reasoning).strip()


def render_decision_prompt(setup: GameSetup, seat: int, public_clues: Sequence[Turn | dict] = (),
                           own_reasoning: Sequence[str | Turn | dict] = (), prompts_path: str | None = None) -> str:
    """Decision-stage prompt of civilian ``seat``: every clue of every round, plus its own reasoning.

    The spy does not vote (spec), so asking for its decision prompt is a ValueError.
    """
    if setup.is_spy(seat):
        raise ValueError(f"player {seat} is the spy: the spy does not vote")
    turns, own = _check_view(setup, seat, setup.rounds + 1, public_clues, own_reasoning)
    prompts = load_prompts(prompts_path)
    clues, reasoning = _history(prompts, turns, own)
    return prompts["decision"].format(seat=seat, n_players=setup.n_players, clues=clues,
                                      own_reasoning=reasoning).strip()


def render_observer_prompt(setup: GameSetup, public_clues: Sequence[Turn | dict] = (),
                           prompts_path: str | None = None) -> str:
    """Released-code option: the observer's vote prompt (civilians' image, all clues, no reasoning)."""
    # Seat n_players + 1 in round rounds + 1 is "after everyone": every clue is visible, nobody's reasoning.
    turns, _ = _check_view(setup, setup.n_players + 1, setup.rounds + 1, public_clues, ())
    prompts = load_prompts(prompts_path)
    clues, _ = _history(prompts, turns, [])
    return prompts["observer"].format(n_players=setup.n_players, clues=clues).strip()
