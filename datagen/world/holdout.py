"""Compositional hold-outs: attribute combinations that no training text may contain.

A combination is a colour and a shape, written ``"red sphere"``. A *held-out* scene has at least one object
with a held-out combination; a *training* scene has none. Training generators redraw a scene until it avoids
every held-out combination (:func:`sample_scene_avoiding`); an evaluation set draws scenes until one holds a
combination of its own list (:func:`sample_scene_with`). Both are deterministic given the ``rng``.

Each word of a held-out combination still appears in training (red cubes, blue spheres), so the evaluation
asks for a composition the model never read, not for an unknown word (``docs/results/unicorn.md``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import numpy as np

from .scene import COLORS, SHAPES, Scene, WorldConfigError, sample_scene

Combo = tuple[str, str]

# The Unicorn toy's default split (fixed before any run; every colour and every shape keeps training combos):
# 4 validation and 4 test combinations out of the 24, no colour in both lists.
VAL_COMBOS = ("red sphere", "blue cylinder", "green cube", "purple sphere")
TEST_COMBOS = ("yellow cube", "cyan sphere", "brown cylinder", "gray cylinder")


def parse_combos(combos: Iterable[str] | None, key: str = "holdout") -> frozenset[Combo]:
    """``["red sphere", ...]`` -> ``{("red", "sphere"), ...}``; a one-line error names ``key`` and the entry."""
    out = set()
    for entry in combos or ():
        words = str(entry).split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise WorldConfigError(f"{key}: {entry!r} is not '<colour> <shape>' (colours {', '.join(COLORS)}; "
                                   f"shapes {', '.join(SHAPES)})")
        out.add((words[0], words[1]))
    return frozenset(out)


def scene_combos(scene: Scene) -> set[Combo]:
    return {(o.color, o.shape) for o in scene.objects}


def sample_scene_avoiding(rng: np.random.Generator, n_objects, combos: frozenset[Combo],
                          max_draws: int = 10_000) -> Scene:
    """A scene none of whose objects has a combination in ``combos`` (the first of successive draws)."""
    for _ in range(max_draws):
        scene = sample_scene(rng, n_objects)
        if not scene_combos(scene) & combos:
            return scene
    raise WorldConfigError(f"no scene without {sorted(combos)} in {max_draws} draws; hold out fewer combinations")


def sample_scene_with(rng: np.random.Generator, n_objects, combos: frozenset[Combo], avoid: frozenset[Combo] = frozenset(),
                      max_draws: int = 10_000) -> Scene:
    """A scene with at least one object in ``combos`` and none in ``avoid`` (the first of successive draws)."""
    for _ in range(max_draws):
        scene = sample_scene(rng, n_objects)
        have = scene_combos(scene)
        if have & combos and not have & avoid:
            return scene
    raise WorldConfigError(f"no scene with one of {sorted(combos)} in {max_draws} draws")


@lru_cache(maxsize=64)
def _patterns(combos: frozenset[Combo]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(rf"\b{c}\b(?:\s+\w+){{0,2}}\s+{s}s?\b") for c, s in sorted(combos))


def mentions(text: str, combos: frozenset[Combo]) -> bool:
    """Whether ``text`` names a combination of ``combos``: the colour, at most two words, then the shape
    ("red sphere", "red metal spheres", "small red rubber sphere"), also in a negative ("is there a red sphere?
    no") -- a held-out stream must not even say that one does not exist."""
    return bool(combos) and any(p.search(text.lower()) for p in _patterns(frozenset(combos)))
