"""The Vision-Zero game engine: plays batches of "Who is the spy?" games with any text generator.

Pure game flow, no torch: the model side is a ``generate_fn(requests) -> outputs`` that receives one
batch of :class:`Request` (prompt text + the image that player sees) and returns, per request, a
string or a :class:`Generation` (text plus whatever the trainer needs later: token ids, pixels).

Flow of :func:`play_games` (spec ``docs/specs/visionzero.md``, "Game"):

1. clue stage: ``rounds`` rounds, seats 1..N in order. Turn ``(r, s)`` of *every* game is generated in
   one batch (all games advance together; a seat cannot be batched with earlier seats of the same round
   because it must see their clues). Each prompt is rendered by :mod:`datagen.visionzero.prompting`,
   which enforces the visibility rules: every earlier public clue, the player's own earlier reasoning,
   never anyone else's reasoning. The output is split into private reasoning (the text before the last
   ``\\boxed{}``) and the public clue (its content);
2. decision stage: every civilian of every game votes, all in ONE batch (``decision="civilians"``,
   paper); or (released-code option ``decision="observer"``) an observer prompt with the civilians'
   image is sampled ``observer_samples`` times per game and the samples are the votes;
3. scoring: votes parsed with :func:`parse_vote` (boxed, ``<answer>``, N/A; invalid votes kept as None),
   then :func:`score_game` with the run's :class:`~train.visionzero.config.RewardConfig`: zero-sum clue
   rewards from the votes, decision rewards per vote. This is the ONE place rewards are computed, for
   training (:class:`~train.visionzero.module.VisionZeroSelfPlay`) and evaluation
   (:mod:`train.visionzero.evaluate`) alike.

``players`` may be one generate function or a dict of them with ``assign(setup, seat) -> key``
(mixed tables for evaluation: trained spy vs base civilians). Requests are then grouped per key, so
each policy still sees one batch per turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datagen.visionzero import (NA, GameSetup, Turn, clue_rewards, decision_rewards, load_prompts,
                                observer_decision_rewards, parse_vote, render_clue_prompt, render_decision_prompt,
                                render_observer_prompt)
from datagen.visionzero.rules import _boxed_contents
from train.visionzero.config import DECISION_MODES, RewardConfig


@dataclass
class Request:
    """One generation request: the prompt text and the image of the player who speaks."""

    prompt: str
    image: Any
    game: int  # position of the game in the batch
    seat: int  # 1-based; the observer is seat 0
    stage: str  # "clue" | "decision" | "observer"
    round: int = 0


@dataclass
class Generation:
    """A generated answer: ``text`` plus model-side data (token ids...) the trainer needs later."""

    text: str
    data: Any = None


GenerateFn = Callable[[list[Request]], Sequence["Generation | str"]]


@dataclass
class PlayedTurn:
    turn: Turn  # seat, round, public clue, private reasoning
    generation: Generation
    format_ok: bool


@dataclass
class GameRecord:
    """A played game: transcript, votes, rewards."""

    setup: GameSetup
    decision: str = "civilians"  # who voted: "civilians" (one vote per civilian) or "observer" (samples)
    turns: list[PlayedTurn] = field(default_factory=list)
    voters: list[int] = field(default_factory=list)  # civilian seats (or 0 per observer sample)
    vote_generations: list[Generation] = field(default_factory=list)
    votes: list = field(default_factory=list)  # parsed: seat, "N/A" or None (invalid)
    clue_rewards: list[float] = field(default_factory=list)  # per seat, index 0 = seat 1
    decision_rewards: list[float] = field(default_factory=list)  # per vote

    @property
    def n_correct(self) -> int:
        return sum(1 for v in self.votes if isinstance(v, int) and v == self.setup.spy)

    @property
    def n_na(self) -> int:
        return sum(1 for v in self.votes if v == NA)

    @property
    def n_invalid(self) -> int:
        return sum(1 for v in self.votes if v is None)


def split_clue(text: str) -> tuple[str, str, bool]:
    """``(private reasoning, public clue, format_ok)`` of a clue-stage output.

    The clue is the content of the last complete ``\\boxed{...}``; the reasoning is the text before that
    box. Without a box the whole output stays private and the public clue is empty (format not ok).
    """
    boxes = _boxed_contents(text)
    if not boxes:
        return text.strip(), "", False
    clue = " ".join(boxes[-1].split())
    cut = text.rfind("\\boxed")
    while cut > 0 and _boxed_contents(text[cut:])[:1] != [boxes[-1]]:
        cut = text.rfind("\\boxed", 0, cut)
    reasoning = text[:max(cut, 0)].strip()
    return reasoning, clue, bool(clue)


def _as_generation(out: Generation | str) -> Generation:
    if isinstance(out, Generation):
        return out
    if not isinstance(out, str):
        raise TypeError(f"generate_fn must return str or Generation, got {type(out).__name__}")
    return Generation(out)


def _dispatch(requests: list[Request], players: GenerateFn | dict[str, GenerateFn],
              keys: list[str] | None) -> list[Generation]:
    """Run each policy once on its share of ``requests`` (order preserved)."""
    if not requests:
        return []
    if not isinstance(players, dict):
        outs = list(players(requests))
        if len(outs) != len(requests):
            raise RuntimeError(f"generate_fn returned {len(outs)} outputs for {len(requests)} requests")
        return [_as_generation(o) for o in outs]
    assert keys is not None
    result: list[Generation | None] = [None] * len(requests)
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        outs = list(players[key]([requests[i] for i in idx]))
        if len(outs) != len(idx):
            raise RuntimeError(f"player {key!r} returned {len(outs)} outputs for {len(idx)} requests")
        for i, o in zip(idx, outs):
            result[i] = _as_generation(o)
    return result  # type: ignore[return-value]


def score_game(rec: GameRecord, rewards: RewardConfig) -> GameRecord:
    """Set ``rec.clue_rewards`` and ``rec.decision_rewards`` from its votes with the run's ``rewards``.

    Clue rewards: zero-sum, β and λ from ``rewards`` (:func:`datagen.visionzero.rules.clue_rewards`).
    Decision rewards: ``correct`` / ``abstain`` / ``wrong`` per vote; for an observer game with
    ``rewards.observer="shaped"``, the released code's shaped reward of each sample (format ok = the
    sample parsed to a seat or N/A).
    """
    s = rec.setup
    rec.clue_rewards = clue_rewards(rec.votes, s.spy, s.n_players, beta=rewards.beta, lam=rewards.lam)
    if rec.decision == "observer" and rewards.observer == "shaped":
        ok = [v is not None for v in rec.votes]
        rec.decision_rewards = observer_decision_rewards(rec.votes, s.spy, ok)
    else:
        rec.decision_rewards = decision_rewards(rec.votes, s.spy, correct=rewards.correct, abstain=rewards.abstain,
                                                wrong=rewards.wrong)
    return rec


def play_games(setups: Sequence[GameSetup], players: GenerateFn | dict[str, GenerateFn],
               assign: Callable[[GameSetup, int], str] | None = None, *, prompts_path: str | None = None,
               decision: str = "civilians", observer_samples: int = 8, observer_key: str | None = None,
               rewards: RewardConfig | None = None) -> list[GameRecord]:
    """Play every game of ``setups`` to the end (see the module docstring); returns one record per game.

    With a dict of ``players``, ``assign(setup, seat)`` names the player key of each seat and
    ``observer_key`` the observer's (default: ``assign(setup, 0)``; seat 0 is the observer).
    ``rewards``: the run's reward settings (:func:`score_game`); ``None`` = the paper's values.
    """
    if decision not in DECISION_MODES:
        raise ValueError(f"decision must be one of {DECISION_MODES}, got {decision!r}")
    multi = isinstance(players, dict)
    if multi and assign is None:
        raise ValueError("several players need assign(setup, seat) -> player key")
    load_prompts(prompts_path)  # fail early on a bad prompt file
    no_clue = load_prompts(prompts_path).get("no_clue", "(no clue)")
    records = [GameRecord(setup=s, decision=decision) for s in setups]
    rounds = {s.rounds for s in setups}
    n_players = {s.n_players for s in setups}
    max_rounds, max_players = max(rounds, default=0), max(n_players, default=0)

    def key(setup: GameSetup, seat: int) -> str | None:
        return assign(setup, seat) if multi else None

    # 1. clue stage: all games advance turn by turn; one batch per (round, seat)
    for rnd in range(1, max_rounds + 1):
        for seat in range(1, max_players + 1):
            reqs, keys, games = [], [], []
            for g, rec in enumerate(records):
                s = rec.setup
                if rnd > s.rounds or seat > s.n_players:
                    continue
                public = [pt.turn for pt in rec.turns]
                own = [pt.turn for pt in rec.turns if pt.turn.seat == seat]
                prompt = render_clue_prompt(s, seat, rnd, public, own, prompts_path)
                reqs.append(Request(prompt, s.image_for(seat), g, seat, "clue", rnd))
                keys.append(key(s, seat))
                games.append(g)
            for g, gen in zip(games, _dispatch(reqs, players, keys if multi else None)):
                reasoning, clue, ok = split_clue(gen.text)
                turn = Turn(seat=seat, round=rnd, clue=clue if ok else no_clue, reasoning=reasoning)
                records[g].turns.append(PlayedTurn(turn, gen, ok))

    # 2. decision stage: one batch for every vote of every game
    reqs, keys, owners = [], [], []
    for g, rec in enumerate(records):
        s = rec.setup
        public = [pt.turn for pt in rec.turns]
        if decision == "civilians":
            for seat in s.civilians:
                own = [pt.turn for pt in rec.turns if pt.turn.seat == seat]
                prompt = render_decision_prompt(s, seat, public, own, prompts_path)
                reqs.append(Request(prompt, s.original, g, seat, "decision", s.rounds + 1))
                keys.append(key(s, seat))
                owners.append((g, seat))
        else:
            prompt = render_observer_prompt(s, public, prompts_path)
            for _ in range(observer_samples):
                reqs.append(Request(prompt, s.original, g, 0, "observer", s.rounds + 1))
                keys.append(observer_key if observer_key is not None else key(s, 0))
                owners.append((g, 0))
    for (g, seat), gen in zip(owners, _dispatch(reqs, players, keys if multi else None)):
        rec = records[g]
        rec.voters.append(seat)
        rec.vote_generations.append(gen)
        rec.votes.append(parse_vote(gen.text, rec.setup.n_players))

    # 3. scoring
    rewards = rewards if rewards is not None else RewardConfig()
    for rec in records:
        score_game(rec, rewards)
    return records


# --- summaries ---------------------------------------------------------------------------------------
def game_stats(records: Sequence[GameRecord]) -> dict[str, float]:
    """Pooled vote accuracy / N/A / invalid rates, clue-format rate and civilians' (majority) win rate."""
    from datagen.visionzero import civilians_win

    n_votes = sum(len(r.votes) for r in records)
    n_turns = sum(len(r.turns) for r in records)
    wins = [civilians_win(r.votes, r.setup.spy, r.setup.n_players) for r in records]
    return {
        "games": float(len(records)),
        "votes": float(n_votes),
        "accuracy": sum(r.n_correct for r in records) / max(n_votes, 1),
        "na_rate": sum(r.n_na for r in records) / max(n_votes, 1),
        "invalid_rate": sum(r.n_invalid for r in records) / max(n_votes, 1),
        "clue_format_ok": sum(pt.format_ok for r in records for pt in r.turns) / max(n_turns, 1),
        "civilian_win_rate": sum(wins) / max(len(wins), 1),
    }


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def format_transcript(rec: GameRecord, extra: str = "") -> str:
    """A full game as text: setup, every turn (reasoning marked private), votes and rewards."""
    s = rec.setup
    lines = [f"game {s.index} | {s.n_players} players, spy = player {s.spy}, {s.rounds} rounds | "
             f"edit: {_one_line(str(s.edit))[:200]}" + (f" | {extra}" if extra else "")]
    for pt in rec.turns:
        t = pt.turn
        role = "spy" if t.seat == s.spy else "civ"
        lines.append(f"  r{t.round} player {t.seat} ({role}): clue = {t.clue!r}   [private: {_one_line(t.reasoning)!r}]"
                     + ("" if pt.format_ok else "  (no \\boxed clue)"))
    for seat, gen, v, r in zip(rec.voters, rec.vote_generations, rec.votes, rec.decision_rewards):
        who = f"player {seat}" if seat else "observer"
        lines.append(f"  vote {who}: {_one_line(gen.text)!r} -> {v} (reward {r:+.2f})")
    lines.append("  clue rewards: " + ", ".join(f"p{i + 1}={r:+.3f}" for i, r in enumerate(rec.clue_rewards)))
    return "\n".join(lines)
