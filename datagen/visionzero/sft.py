"""Supervised "base policy" samples for the Vision-Zero toy recipe (no Lightning, no model code).

Spec, "Toy-scale notes": self-play needs a learning signal from step one, so the supervised stage that
makes the base policy teaches the world's language AND the game's output formats, without teaching it
to play well:

* ``caption``: "describe the image." -> "there are three objects: a red cube, a blue sphere and ...";
* ``qa``: world questions with exact answers ("is there a red cube?" -> "yes"; balanced yes/no), plus
  the world's own question types (count, colour, shape, relation);
* ``clue``: a clue-stage prompt of a simulated game (rendered with the real templates and visibility
  rules) -> a short private note and a clue that is a caption of ONE object of the player's OWN image,
  e.g. ``"i see three objects. \\boxed{a red cube}"`` -- the spy is not taught to blend in;
* ``vote``: a decision prompt of a simulated game -> ``\\boxed{k}`` with ``k`` drawn uniformly among the
  other seats, so decision accuracy starts at chance (1 / (N - 1)) with valid votes.

Every sample is ``{"image": PIL, "prompt": str, "target": str, "kind": str}``; the prompt is the user
text (the trainer prepends the image placeholder and applies the chat template).
"""

from __future__ import annotations

import numpy as np

from datagen.generator import SampleGenerator
from datagen.world import count_phrase, object_phrase, qa_pairs, render_scene, sample_scene
from datagen.world.scene import COLORS, SHAPES

from .pairs import PairSource, WorldPairs
from .prompting import Turn, render_clue_prompt, render_decision_prompt
from .setups import GameSetups

KINDS = ("caption", "qa", "clue", "vote")
CLUE_ATTRS = ("color", "shape")  # clue = "a red cube": the attributes the spy edits change


def object_clue(obj: dict) -> str:
    """The toy clue for one object: ``"a red cube"``."""
    return object_phrase(obj, CLUE_ATTRS, "a")


def list_caption(objects: list[dict]) -> str:
    """"there are three objects: a red cube, a blue sphere and a green cylinder." (left to right)."""
    objs = sorted(objects, key=lambda o: o["x"])
    n = len(objs)
    if n == 0:
        return "there are no objects."
    phrases = [object_clue(o) for o in objs]
    if n == 1:
        return f"there is one object: {phrases[0]}."
    return f"there are {count_phrase(n)}: " + ", ".join(phrases[:-1]) + f" and {phrases[-1]}."


def caption_turn(objects: list[dict], rng: np.random.Generator, mentioned: set[str]) -> tuple[str, str]:
    """``(reasoning, clue)`` of the base policy: one object of the player's own scene, preferably one not
    mentioned yet ("describe a feature nobody has mentioned")."""
    reasoning = f"i see {count_phrase(len(objects))}."
    if not objects:
        return reasoning, "nothing"
    phrases = [object_clue(o) for o in objects]
    fresh = [p for p in phrases if p not in mentioned]
    pool = fresh or phrases
    return reasoning, pool[int(rng.integers(len(pool)))]


def format_clue_output(reasoning: str, clue: str) -> str:
    return f"{reasoning} \\boxed{{{clue}}}"


class GameSFTSamples(SampleGenerator):
    """Stream generator of supervised base-policy samples (see the module docstring).

    Args:
        source: pair source of the simulated games (default: :class:`WorldPairs`, 2-3 objects, k = 2).
        n_civilians, rounds: game size of the simulated games (match the self-play config).
        weights: sampling weights of ``caption``, ``qa``, ``clue``, ``vote``.
        n_objects: object counts of the caption / QA scenes.
        image_size: render size of the caption / QA scenes.
        prompts_path: the prompt templates (default ``configs/visionzero/prompts/game.yaml``).
    """

    def __init__(self, source: PairSource | None = None, n_civilians: int = 4, rounds: int = 2,
                 weights: dict[str, float] | None = None, n_objects: tuple[int, int] = (1, 4),
                 image_size: int = 64, prompts_path: str | None = None) -> None:
        self.games = GameSetups(source if source is not None else WorldPairs(n_objects=(2, 3)),
                                n_civilians=n_civilians, rounds=rounds)
        w = dict(weights or {"caption": 0.2, "qa": 0.3, "clue": 0.3, "vote": 0.2})
        bad = [k for k in w if k not in KINDS]
        if bad or not any(v > 0 for v in w.values()):
            raise ValueError(f"weights: unknown kinds {bad} or no positive weight (kinds: {KINDS})")
        self.kinds = [k for k in KINDS if w.get(k, 0) > 0]
        p = np.array([w[k] for k in self.kinds], dtype=float)
        self.p = p / p.sum()
        self.n_objects, self.image_size, self.prompts_path = tuple(n_objects), int(image_size), prompts_path

    # -- simulated game (base-policy clues) --------------------------------------------------------
    def simulate_turns(self, setup, rng: np.random.Generator, upto: tuple[int, int] | None = None) -> list[Turn]:
        """Caption clues of every turn before ``upto = (round, seat)`` (all turns when None)."""
        scenes = {True: setup.meta["modified_scene"]["objects"], False: setup.meta["original_scene"]["objects"]}
        turns: list[Turn] = []
        for rnd in range(1, setup.rounds + 1):
            for seat in setup.seats:
                if upto is not None and (rnd, seat) >= upto:
                    return turns
                mentioned = {t.clue for t in turns}
                reasoning, clue = caption_turn(scenes[setup.is_spy(seat)], rng, mentioned)
                turns.append(Turn(seat=seat, round=rnd, clue=clue, reasoning=reasoning))
        return turns

    def _game_sample(self, rng: np.random.Generator, index: int, kind: str) -> dict:
        setup = self.games.setup(rng, index)
        if kind == "clue":
            rnd = int(rng.integers(1, setup.rounds + 1))
            seat = int(rng.integers(1, setup.n_players + 1))
            turns = self.simulate_turns(setup, rng, upto=(rnd, seat))
            own = [t for t in turns if t.seat == seat]
            prompt = render_clue_prompt(setup, seat, rnd, turns, own, self.prompts_path)
            scene = (setup.meta["modified_scene"] if setup.is_spy(seat) else setup.meta["original_scene"])["objects"]
            reasoning, clue = caption_turn(scene, rng, {t.clue for t in turns})
            target = format_clue_output(reasoning, clue)
        else:
            turns = self.simulate_turns(setup, rng)
            civs = setup.civilians
            seat = civs[int(rng.integers(len(civs)))]
            own = [t for t in turns if t.seat == seat]
            prompt = render_decision_prompt(setup, seat, turns, own, self.prompts_path)
            others = [s for s in setup.seats if s != seat]
            target = f"\\boxed{{{others[int(rng.integers(len(others)))]}}}"  # uniform: chance-level votes
        return {"image": setup.image_for(seat), "prompt": prompt, "target": target, "kind": kind}

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.p))]
        if kind in ("clue", "vote"):
            return self._game_sample(rng, index, kind)
        scene = sample_scene(rng, self.n_objects)
        image = render_scene(scene, self.image_size, rng)
        objects = scene.to_dict()["objects"]
        if kind == "caption":
            return {"image": image, "prompt": "describe the image.", "target": list_caption(objects),
                    "kind": kind}
        if rng.random() < 0.7 or not objects:  # balanced "is there a <colour> <shape>?"
            present = {(o["color"], o["shape"]) for o in objects}
            if objects and rng.random() < 0.5:
                o = objects[int(rng.integers(len(objects)))]
                pair, answer = (o["color"], o["shape"]), "yes"
            else:
                absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
                pair, answer = absent[int(rng.integers(len(absent)))], "no"
            q = f"is there {object_clue({'color': pair[0], 'shape': pair[1]})}?"
            return {"image": image, "prompt": q, "target": answer, "kind": kind}
        qa = qa_pairs(scene, rng, 1)
        return {"image": image, "prompt": qa[0].question, "target": qa[0].answer, "kind": kind}

    def validate(self, sample: dict) -> str | None:
        if not sample.get("prompt") or not sample.get("target"):
            return "empty prompt or target"
        return None

    def corpus(self, n: int = 400, seed: int = 0) -> list[str]:
        """Prompt + target texts of ``n`` samples (to build a tokenizer that covers every game word)."""
        from datagen.generator import sample_rng

        out = []
        for i in range(n):
            s = self.generate(sample_rng(seed, i), i)
            out.append(s["prompt"] + " " + s["target"])
        return out
