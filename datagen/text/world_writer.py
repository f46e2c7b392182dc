"""The scene world as its own "LLM": an exact, offline writer for Unicorn stages 1 and 2.

:class:`WorldWriter` answers the *same prompts* an LLM gets (``configs/unicorn/prompts``) with the
*same output format* (plain caption; JSON list of items), so toy runs and tests exercise the real
parsing path. It tells the stages apart by matching a prompt against the two templates
(:meth:`PromptTemplate.match`), then:

* stage 1 (``{seed}``) -> the scene the seed was made from when it was bound with :meth:`bind`,
  else a random scene consistent with the seed (:func:`scene_for_seed`, as an LLM would invent
  details) -> ``dense_caption``;
* stage 2 (``{caption}``) -> the scene graph read back from the dense caption
  (:func:`scene_from_dense_caption`) -> ``qa_pairs`` -> items: ``mc`` (the answer + 3 distinct
  distractors from the question's closed answer set, shuffled), ``open`` (the exact answer) and
  ``reasoning`` (count/exist questions answered by listing, filtering and concluding).

Prompt ``i`` of a call uses ``np.random.default_rng([seed, i])``: outputs are reproducible.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict

import numpy as np

from datagen.world import (COLORS, NUMBER_WORDS, SHAPES, Scene, SceneObject, dense_caption, object_phrase, qa_pairs,
                           referring_attrs, sample_scene)
from datagen.world.scene import MATERIALS, SIZES, position_ok

from .base import Messages, PromptTemplate, TextBackend, load_prompt

PROMPT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "unicorn", "prompts")
LETTERS = "ABCD"
_VALUE_ATTR = {v: a for a, vals in (("size", SIZES), ("color", COLORS), ("material", MATERIALS)) for v in vals}
_NP_RE = re.compile(r"\b(a|an|one|two|three|four|five|six)\s+((?:(?:%s)\s+)*)(cube|sphere|cylinder|object)s?\b"
                    % "|".join(_VALUE_ATTR))
_FULL_RE = re.compile(r"an? (small|large) (\w+) (rubber|metal) (cube|sphere|cylinder)")
_REL_RE = re.compile(r"(the .+?) is (to the left of|to the right of) (the .+?) and (behind|in front of) it\.")


def _seed_constraints(seed: str) -> tuple[int | None, list[dict[str, str]]]:
    """(object count or None, attribute constraints of the objects a world seed caption names)."""
    count, constraints = None, []
    for det, attrs, noun in _NP_RE.findall(seed.lower()):
        if det in NUMBER_WORDS and noun == "object" and not attrs.strip():
            count = NUMBER_WORDS.index(det)  # "three objects": a count seed
            continue
        c = {_VALUE_ATTR[w]: w for w in attrs.split()}
        if noun != "object":
            c["shape"] = noun
        constraints.append(c)
    return count, constraints


def scene_for_seed(seed: str, rng: np.random.Generator, max_objects: int = 4, tries: int = 200) -> Scene:
    """A random scene of which the world seed caption ``seed`` is true.

    Count seeds fix the number of objects; object seeds fix attributes of 1-2 objects (others random,
    up to ``max_objects``); relation seeds ("a cube to the left of a sphere") also make the two shapes
    unique and put them in the stated order. Layouts come from ``sample_scene``; a layout that a
    changed size makes invalid is redrawn.
    """
    text = seed.lower()
    if "empty" in text or "no objects" in text:
        return Scene(())
    count, cons = _seed_constraints(text)
    relation = "to the left of" in text and len(cons) == 2 and all("shape" in c for c in cons)
    lo = count if count is not None else max(1, len(cons))
    hi = count if count is not None else max(lo, max_objects)
    for _ in range(tries):
        objs = list(sample_scene(rng, (lo, hi)).objects)
        slots = list(range(len(cons)))
        if relation:
            slots = sorted(slots, key=lambda k: objs[k].x)  # constraint 0 goes to the left object
            named = {cons[0]["shape"], cons[1]["shape"]}
            other = next(s for s in SHAPES if s not in named)
            objs[2:] = [o.replace(shape=other) if o.shape in named else o for o in objs[2:]]
        for k, c in zip(slots, cons):
            objs[k] = objs[k].replace(**c)
        # A size change alters the bounding radius: keep the layout only if it is still valid.
        if all(position_ok(objs[:k] + objs[k + 1:], o.size, o.x, o.y) for k, o in enumerate(objs)):
            return Scene(tuple(objs))
    raise ValueError(f"could not build a scene for seed {seed!r} in {tries} tries")


def scene_from_dense_caption(caption: str) -> Scene:
    """Inverse of ``dense_caption`` up to positions: the objects with all their attributes, the
    left-to-right order, and the front/back order of every object that has a unique description
    (exactly what ``qa_pairs`` questions can depend on). Positions are evenly spaced ranks.
    Raises ``ValueError`` on text that is not a world dense caption.
    """
    text = caption.strip().lower()
    if text == "there are no objects.":
        return Scene(())
    sentences = re.split(r"(?<=\.)\s+", text)
    head = re.fullmatch(r"there (?:is|are) (\w+) objects?: (.+)\.", sentences[0])
    if head is None:
        raise ValueError(f"not a world dense caption: {caption[:60]!r}")
    phrases = re.split(r", | and ", head.group(2))
    parsed = [_FULL_RE.fullmatch(p) for p in phrases]
    if any(p is None for p in parsed) or NUMBER_WORDS.index(head.group(1)) != len(parsed):
        raise ValueError(f"cannot read the object list of {caption[:60]!r}")
    n = len(parsed)
    objs = [SceneObject(shape=p[4], color=p[2], size=p[1], material=p[3], x=(k + 1) / (n + 1), y=0.5)
            for k, p in enumerate(parsed)]
    scene = Scene(tuple(objs))
    names = {}
    for i in range(n):
        attrs = referring_attrs(scene, i)
        if attrs is not None:
            names[object_phrase(objs[i], attrs, "the")] = i
    behind: dict[int, set[int]] = {i: set() for i in range(n)}  # behind[j] = objects behind j
    for sentence in sentences[1:]:
        m = _REL_RE.fullmatch(sentence)
        if m is None or m.group(1) not in names or m.group(3) not in names:
            raise ValueError(f"cannot read the relation {sentence!r}")
        i, j = names[m.group(1)], names[m.group(3)]
        if (m.group(2) == "to the left of") != (i < j):
            raise ValueError(f"relation {sentence!r} contradicts the listed left-to-right order")
        a, b = (i, j) if m.group(4) == "behind" else (j, i)
        behind[b].add(a)
    order: list[int] = []  # topological sort, back to front (Kahn, lowest index first on ties)
    while len(order) < n:
        ready = [k for k in range(n) if k not in order and behind[k] <= set(order)]
        if not ready:
            raise ValueError(f"contradictory depth relations in {caption[:60]!r}")
        order.append(ready[0])
    rank = {k: r for r, k in enumerate(order)}
    return Scene(tuple(o.replace(y=(rank[k] + 1) / (n + 1)) for k, o in enumerate(objs)))


def _matches(obj, words: list[str]) -> bool:
    """Whether ``obj`` has every attribute word of a filter phrase ("small red cubes", "metal objects")."""
    values = {obj.shape, obj.color, obj.size, obj.material}
    for w in words:
        w = w[:-1] if w.endswith("s") and w[:-1] in SHAPES + ("object",) else w
        if w != "object" and w not in values:
            return False
    return True


def _reasoning(scene: Scene, qa) -> str | None:
    """A step-by-step answer (list the objects, filter, conclude) for count and exist questions."""
    pattern = {"count": r"how many (.+) are there\?", "exist": r"is there an? (.+)\?"}.get(qa.qtype)
    m = re.fullmatch(pattern, qa.question) if pattern else None
    if m is None:
        return None
    objs = sorted(scene.objects, key=lambda o: o.x)
    listing = ", ".join(object_phrase(o, det="a") for o in objs)
    steps = [f"From left to right the scene shows {listing}." if objs else "The scene is empty."]
    hits = [object_phrase(o, det="a") for o in objs if _matches(o, m.group(1).split())]
    if qa.qtype == "count":
        steps.append(f"The {m.group(1)} among them: {', '.join(hits) if hits else 'none'}, "
                     f"which makes {NUMBER_WORDS[len(hits)]}.")
    else:
        article = "an" if m.group(1)[0] in "aeiou" else "a"
        first = hits[0][0].upper() + hits[0][1:] if hits else ""
        steps.append(f"{first} is one." if hits else f"None of them is {article} {m.group(1)}.")
    return " ".join(steps) + f" So the answer is {qa.answer}."


def instruction_items(scene: Scene, rng: np.random.Generator, n_items: tuple[int, int] = (6, 8)) -> list[dict]:
    """Stage-2 items for ``scene`` (see module docstring); answers are exact by construction."""
    n = int(rng.integers(n_items[0], n_items[1] + 1))
    items = []
    for qa in qa_pairs(scene, rng, n):
        kinds = ["open"]
        wrong = sorted(set(qa.choices or ()) - {qa.answer})
        if len(wrong) >= 3:
            kinds.append("mc")
        reasoning = _reasoning(scene, qa)
        if reasoning is not None:
            kinds.append("reasoning")
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "mc":
            options = [qa.answer] + [str(w) for w in rng.choice(wrong, size=3, replace=False)]
            options = [options[k] for k in rng.permutation(4)]
            items.append({"type": "mc", "question": qa.question, "options": options,
                          "answer": LETTERS[options.index(qa.answer)]})
        elif kind == "reasoning":
            items.append({"type": "reasoning", "question": f"{qa.question} Think it through step by step.",
                          "answer": reasoning})
        else:
            items.append({"type": "open", "question": qa.question, "answer": qa.answer})
    return items


class WorldWriter(TextBackend):
    """The world's exact writer behind the :class:`TextBackend` interface (see module docstring).

    A prompt that matches neither template, or whose seed/caption the world cannot read, yields None
    (counted in ``failures``), as a failed LLM call would.
    """

    name = "world"

    def __init__(self, caption_prompt: PromptTemplate | str | None = None,
                 instruction_prompt: PromptTemplate | str | None = None, n_items: tuple[int, int] = (6, 8),
                 max_objects: int = 4, max_bound: int = 4096) -> None:
        super().__init__()
        def load(p, default):
            return p if isinstance(p, PromptTemplate) else load_prompt(p or os.path.join(PROMPT_DIR, default))

        self.caption_prompt = load(caption_prompt, "caption_expansion.yaml")
        self.instruction_prompt = load(instruction_prompt, "instructions.yaml")
        self.n_items, self.max_objects, self.max_bound = tuple(n_items), int(max_objects), int(max_bound)
        self._bound: OrderedDict[str, Scene] = OrderedDict()

    def config(self) -> dict:
        return {"backend": self.name, "n_items": list(self.n_items), "max_objects": self.max_objects}

    def bind(self, seed: str, scene: Scene | dict) -> None:
        """Remember the scene a seed caption was made from (bounded, oldest dropped first), so that
        stage 1 describes *that* scene rather than a new one consistent with the seed."""
        self._bound[seed.strip()] = Scene.from_dict(scene) if isinstance(scene, dict) else scene
        while len(self._bound) > self.max_bound:
            self._bound.popitem(last=False)

    def caption(self, seed: str | Scene | dict, rng: np.random.Generator) -> str:
        """Stage 1: the dense caption of a scene (given, bound to ``seed``, or sampled for it)."""
        if isinstance(seed, dict):
            seed = Scene.from_dict(seed)
        if not isinstance(seed, Scene):
            seed = self._bound.get(seed.strip()) or scene_for_seed(seed, rng, self.max_objects)
        return dense_caption(seed)

    def instructions(self, caption: str | Scene | dict, rng: np.random.Generator) -> str:
        """Stage 2: a JSON list of items, formatted as an LLM would answer."""
        if isinstance(caption, dict):
            caption = Scene.from_dict(caption)
        scene = caption if isinstance(caption, Scene) else scene_from_dense_caption(caption)
        return json.dumps(instruction_items(scene, rng, self.n_items), indent=2)

    def complete(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                 seed: int = 0) -> list[str | None]:
        out: list[str | None] = []
        for i, messages in enumerate(prompts):
            rng = np.random.default_rng([int(seed), i])
            try:
                if (fields := self.caption_prompt.match(messages)) is not None:
                    out.append(self.caption(fields["seed"], rng))
                elif (fields := self.instruction_prompt.match(messages)) is not None:
                    out.append(self.instructions(fields["caption"], rng))
                else:
                    raise ValueError("the prompt matches neither the caption nor the instruction template")
            except ValueError:
                self.failures += 1
                out.append(None)
        return out
