"""Game setups for the online stream: one sample = one "Who is the spy?" game to be played.

A setup fixes everything that is not the policy's choice: the image pair, the number of players,
the spy's seat (uniform over 1..N, spec "Game": drawn at random per game), the number of clue rounds
and a per-game ``seed`` for the rollout's own sampling. The rollout (clues, votes) is played by the
training side; the rules (:mod:`datagen.visionzero.rules`) score it.

Placement: :class:`datagen.stream.GeneratorStream` hands out whole samples, each global index to one
(rank, worker) slot, so a game is generated, played and scored on a single rank and never spans ranks
or workers; resuming a stream replays exactly the same games.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from datagen.generator import SampleGenerator

from .pairs import PairSource, WorldPairs

N_CIVILIANS = 4  # spec: n_c = 4 (released code: 3 civilians + spy = 4 players in total)
ROUNDS = 2  # spec: R = 2 clue rounds


@dataclass
class GameSetup:
    """Everything fixed before a game is played. Seats are 1-based; ``spy`` is the spy's seat."""

    original: Image.Image  # what the civilians see
    modified: Image.Image  # what the spy sees
    n_players: int
    spy: int
    rounds: int = ROUNDS
    seed: int = 0
    edit: dict = field(default_factory=dict)
    source: str = ""
    meta: dict = field(default_factory=dict)
    index: int = -1

    def __post_init__(self) -> None:
        if self.n_players < 3:
            raise ValueError(f"a game needs at least 3 players (2 civilians + spy), got {self.n_players}")
        if not 1 <= self.spy <= self.n_players:
            raise ValueError(f"spy seat {self.spy} is not in 1..{self.n_players}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    @property
    def seats(self) -> list[int]:
        return list(range(1, self.n_players + 1))

    @property
    def civilians(self) -> list[int]:
        return [s for s in self.seats if s != self.spy]

    def is_spy(self, seat: int) -> bool:
        self._check_seat(seat)
        return seat == self.spy

    def image_for(self, seat: int) -> Image.Image:
        """The image player ``seat`` sees (the modified one for the spy)."""
        return self.modified if self.is_spy(seat) else self.original

    def _check_seat(self, seat: int) -> None:
        if not 1 <= seat <= self.n_players:
            raise ValueError(f"seat {seat} is not in 1..{self.n_players}")

    def to_sample(self) -> dict:
        """Stream/shard layout: the two images as fields, everything else JSON-able under ``json``."""
        return {"image_original": self.original, "image_modified": self.modified,
                "json": {"n_players": self.n_players, "spy": self.spy, "rounds": self.rounds, "seed": self.seed,
                         "edit": self.edit, "source": self.source, "meta": self.meta, "index": self.index}}

    @classmethod
    def from_sample(cls, sample: dict) -> "GameSetup":
        """Inverse of :meth:`to_sample` (bookkeeping fields of the stream are ignored)."""
        j: dict[str, Any] = sample["json"]
        return cls(original=sample["image_original"], modified=sample["image_modified"],
                   n_players=int(j["n_players"]), spy=int(j["spy"]), rounds=int(j["rounds"]), seed=int(j["seed"]),
                   edit=j.get("edit", {}), source=j.get("source", ""), meta=j.get("meta", {}),
                   index=int(j.get("index", -1)))


class GameSetups(SampleGenerator):
    """Stream generator of game setups: ``generate(rng, index)`` -> :meth:`GameSetup.to_sample`.

    Draw order (all from ``rng``): spy seat uniform in 1..N, game seed, then the pair. Seat and seed
    come first so they do not depend on how many numbers the pair source consumes.
    ``source`` defaults to :class:`WorldPairs` with the paper's settings.
    """

    def __init__(self, source: PairSource | None = None, n_civilians: int = N_CIVILIANS, rounds: int = ROUNDS) -> None:
        if n_civilians < 2:
            raise ValueError(f"n_civilians must be >= 2 (votes need someone other than the spy), got {n_civilians}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.source = source if source is not None else WorldPairs()
        self.n_civilians, self.rounds = int(n_civilians), int(rounds)

    @property
    def n_players(self) -> int:
        return self.n_civilians + 1

    def setup(self, rng: np.random.Generator, index: int = -1) -> GameSetup:
        """One :class:`GameSetup` (what :meth:`generate` returns, before flattening)."""
        spy = int(rng.integers(1, self.n_players + 1))
        seed = int(rng.integers(2**63))
        p = self.source.pair(rng)
        return GameSetup(original=p["original"], modified=p["modified"], n_players=self.n_players, spy=spy,
                         rounds=self.rounds, seed=seed, edit=p["edit"], source=p["source"],
                         meta=p.get("meta", {}), index=int(index))

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        return self.setup(rng, index).to_sample()

    def validate(self, sample: dict) -> str | None:
        """Reject malformed games: missing/odd images, a spy seat out of range, or identical images."""
        try:
            g = GameSetup.from_sample(sample)
        except (KeyError, TypeError, ValueError) as exc:
            return f"bad game setup: {exc}"
        for name, im in (("image_original", g.original), ("image_modified", g.modified)):
            if not isinstance(im, Image.Image):
                return f"{name} is {type(im).__name__}, not a PIL image"
        if g.original.size != g.modified.size:
            return f"image sizes differ: {g.original.size} vs {g.modified.size}"
        if g.original.tobytes() == g.modified.tobytes():
            return "the spy's image equals the civilians' image: the spy cannot be found"
        return None
