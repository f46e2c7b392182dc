"""Captions at the four UniFilter quality levels, exact by construction (``docs/specs/unifilter.md``).

A scene is described by the world's own caption (:func:`describe`); the lower levels describe a
*corrupted copy* of the scene graph, so what is wrong with a caption is known exactly:

=====  ==================  ===================================================================================
level  name                the text describes
=====  ==================  ===================================================================================
3      ``exact``           the scene itself
2      ``one_error``       the scene with exactly one attribute of one object changed (:func:`one_attribute_error`)
1      ``several_errors``  the scene with 2..``max_changes`` attribute slots changed, or one object added or
                           removed so that the object count is wrong (:func:`several_errors`)
0      ``unrelated``       an independently drawn scene of the same split (:func:`unrelated_scene`)
=====  ==================  ===================================================================================

An attribute slot is one (object, attribute) pair, attribute in ``size``, ``color``, ``material``, ``shape``;
a changed slot always takes a different value. The corrupted copy keeps every position, so the caption's
left-to-right object order is the scene's and an attribute error is visible as one changed word of one
object phrase.

Two text modes (``TEXT_MODES``): ``"dense"`` is :func:`datagen.world.dense_caption` (objects, count and
pairwise relations); ``"objects"`` is its first sentence only, the count and the object list ("there are
two objects: a large red metal cube and a small blue rubber sphere."), short enough for CPU toys.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datagen.world import dense_caption, edit_scene, sample_scene
from datagen.world.scene import ATTRIBUTE_VALUES, ATTRIBUTES, Scene

LEVELS = (0, 1, 2, 3)
LEVEL_NAMES = ("unrelated", "several_errors", "one_error", "exact")  # indexed by level
TEXT_MODES = ("dense", "objects")
#: Default most attribute slots a level-1 caption gets wrong (at least 2; "obvious errors").
MAX_CHANGES = 3
#: Redraws of the unrelated scene of level 0 before giving up (a failed sample is dropped and counted).
UNRELATED_TRIES = 50


def describe(scene: Scene, text_mode: str = "dense") -> str:
    """The caption of ``scene`` in ``text_mode`` (``"dense"`` or ``"objects"``, see the module docstring)."""
    text = dense_caption(scene)
    if text_mode == "dense":
        return text
    if text_mode == "objects":
        return text.split(". ", 1)[0].rstrip(".") + "."
    raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")


def _other_value(rng: np.random.Generator, attr: str, old: str) -> str:
    values = [v for v in ATTRIBUTE_VALUES[attr] if v != old]
    return values[int(rng.integers(len(values)))]


def change_slots(scene: Scene, slots: list[tuple[int, str]], rng: np.random.Generator) -> tuple[Scene, list[dict]]:
    """``scene`` with each (object index, attribute) slot set to another value; the changes as JSON-able dicts
    ``{"index", "field", "from", "to"}`` (indices in ``scene.objects``)."""
    objs = list(scene.objects)
    changes = []
    for i, attr in slots:
        new = _other_value(rng, attr, objs[i].attr(attr))
        changes.append({"index": int(i), "field": attr, "from": objs[i].attr(attr), "to": new})
        objs[i] = objs[i].replace(**{attr: new})
    return Scene(tuple(objs)), changes


def _pick_slots(scene: Scene, k: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    n_slots = len(scene) * len(ATTRIBUTES)
    picked = sorted(rng.choice(n_slots, size=k, replace=False).tolist())
    return [(s // len(ATTRIBUTES), ATTRIBUTES[s % len(ATTRIBUTES)]) for s in picked]


def one_attribute_error(scene: Scene, rng: np.random.Generator) -> tuple[Scene, dict]:
    """Level 2: exactly one attribute of one object changed. ValueError for an empty scene."""
    if not len(scene):
        raise ValueError("one_attribute_error: the scene has no objects")
    wrong, changes = change_slots(scene, _pick_slots(scene, 1, rng), rng)
    return wrong, {"kind": "attribute", "changes": changes}


def several_errors(scene: Scene, rng: np.random.Generator, max_changes: int = MAX_CHANGES) -> tuple[Scene, dict]:
    """Level 1: either 2..``max_changes`` attribute slots changed (``kind="attributes"``) or the object count
    made wrong by adding or removing one object (``kind="add"`` / ``"remove"``), each half of the time.

    A one-object scene cannot lose its object and a full one may have no room for another: the other count
    edit is used then. ValueError for an empty scene.
    """
    n = len(scene)
    if not n:
        raise ValueError("several_errors: the scene has no objects")
    if rng.random() < 0.5:
        k = int(rng.integers(2, max(2, min(int(max_changes), n * len(ATTRIBUTES))) + 1))
        wrong, changes = change_slots(scene, _pick_slots(scene, k, rng), rng)
        return wrong, {"kind": "attributes", "changes": changes}
    kinds = ["add", "remove"] if n >= 2 else ["add"]
    first = kinds[int(rng.integers(len(kinds)))]
    for kind in dict.fromkeys([first, *kinds]):
        try:
            wrong, edit = edit_scene(scene, kind, rng)
        except RuntimeError:  # add: no free position left
            continue
        return wrong, {"kind": kind, "changes": edit["changes"]}
    raise RuntimeError(f"several_errors: no count edit possible for a scene of {n} objects")


def slot_differences(a: Scene, b: Scene) -> int | None:
    """Attribute slots in which ``b`` differs from ``a``, objects matched left to right; None when the counts
    differ. (A measure of how close a caption of ``b`` is to the truth about ``a``.)"""
    if len(a) != len(b):
        return None
    pa, pb = sorted(a.objects, key=lambda o: o.x), sorted(b.objects, key=lambda o: o.x)
    return sum(x.attr(f) != y.attr(f) for x, y in zip(pa, pb) for f in ATTRIBUTES)


def unrelated_scene(scene: Scene, rng: np.random.Generator, n_objects: Any,
                    text_mode: str = "dense", tries: int = UNRELATED_TRIES) -> tuple[Scene, dict]:
    """Level 0: an independently drawn scene (``n_objects`` as for :func:`datagen.world.sample_scene`).

    Redrawn while its caption equals the truth's or it is within one attribute slot of the scene (such a
    caption would be a level-2 one by chance); RuntimeError after ``tries`` draws.
    """
    truth = describe(scene, text_mode)
    for _ in range(int(tries)):
        other = sample_scene(rng, n_objects)
        diff = slot_differences(scene, other)
        if describe(other, text_mode) != truth and (diff is None or diff >= 2):
            return other, {"kind": "unrelated", "changes": []}
    raise RuntimeError(f"unrelated_scene: every one of {tries} draws was a near copy of the scene")


def caption_at_level(scene: Scene, level: int, rng: np.random.Generator, *, n_objects: Any,
                     text_mode: str = "dense", max_changes: int = MAX_CHANGES) -> tuple[str, dict]:
    """The caption of ``scene`` at quality ``level`` and what it describes:
    ``(text, {"level", "level_name", "kind", "changes", "caption_scene"})``; ``caption_scene`` is the
    (corrupted) scene graph the text is the caption of."""
    if level == 3:
        described, corruption = scene, {"kind": "none", "changes": []}
    elif level == 2:
        described, corruption = one_attribute_error(scene, rng)
    elif level == 1:
        described, corruption = several_errors(scene, rng, max_changes)
    elif level == 0:
        described, corruption = unrelated_scene(scene, rng, n_objects, text_mode)
    else:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    meta = {"level": int(level), "level_name": LEVEL_NAMES[level], **corruption, "caption_scene": described.to_dict()}
    return describe(described, text_mode), meta
