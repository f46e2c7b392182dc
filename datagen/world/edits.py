"""Minimally edited scene pairs (for edit-aware contrastive / instruction data).

An edit changes as little as possible and says exactly what it changed, in a JSON-able dict:

* ``replace_shape`` / ``replace_color`` / ``replace_shape_color``: ``k`` distinct objects get a new
  value (always different from the old one) at the same position, size and material;
  ``{"kind": ..., "changes": [{"index": i, "field": "color", "from": "red", "to": "blue"}, ...]}``
  (``replace_shape_color`` has two entries per object, one per field).
* ``add``: one random object at a free position, appended last;
  ``{"kind": "add", "changes": [{"index": n, "object": {...}}]}``.
* ``remove``: one object removed (the scene must keep at least one);
  ``{"kind": "remove", "changes": [{"index": i, "object": {...}}]}`` (index in the original scene).
* ``blank``: every object removed; ``changes`` lists them all. Renders as the background only.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .render import render_scene
from .scene import ATTRIBUTE_VALUES, COLORS, MATERIALS, SHAPES, SIZES, Scene, SceneObject, free_position, sample_scene

EDIT_KINDS = ("replace_shape", "replace_color", "replace_shape_color", "add", "remove", "blank")
_REPLACE_FIELDS = {"replace_shape": ("shape",), "replace_color": ("color",), "replace_shape_color": ("shape", "color")}


def _other_value(rng: np.random.Generator, field: str, old: str) -> str:
    """A value of ``field`` drawn uniformly among those different from ``old``."""
    values = [v for v in ATTRIBUTE_VALUES[field] if v != old]
    return values[int(rng.integers(len(values)))]


def edit_scene(scene: Scene, kind: str, rng: np.random.Generator, k: int = 1) -> tuple[Scene, dict]:
    """Apply one edit of ``kind`` (see ``EDIT_KINDS``) to ``scene``; return ``(new_scene, description)``.

    ``k`` is the number of objects changed by the replace kinds (capped at the object count); add
    and remove always touch one object. Raises ValueError for an unknown kind or an impossible edit
    (replace/remove on an empty scene, remove on a one-object scene) and RuntimeError when ``add``
    finds no free position.
    """
    objs = list(scene.objects)
    n = len(objs)
    if kind in _REPLACE_FIELDS:
        if n == 0:
            raise ValueError(f"{kind}: the scene has no objects")
        changes = []
        for i in sorted(rng.choice(n, size=min(max(int(k), 1), n), replace=False).tolist()):
            new = {f: _other_value(rng, f, objs[i].attr(f)) for f in _REPLACE_FIELDS[kind]}
            changes += [{"index": i, "field": f, "from": objs[i].attr(f), "to": v} for f, v in new.items()]
            objs[i] = objs[i].replace(**new)
        return Scene(tuple(objs)), {"kind": kind, "changes": changes}
    if kind == "add":
        pick = lambda values: values[int(rng.integers(len(values)))]  # noqa: E731
        shape, color, size, material = pick(SHAPES), pick(COLORS), pick(SIZES), pick(MATERIALS)
        pos = free_position(rng, objs, size, tries=500)
        if pos is None and size == "large":  # a crowded scene may still have room for a small one
            size, pos = "small", free_position(rng, objs, "small", tries=500)
        if pos is None:
            raise RuntimeError(f"add: no free position in a scene of {n} objects")
        obj = SceneObject(shape, color, size, material, *pos)
        return Scene(tuple(objs + [obj])), {"kind": kind, "changes": [{"index": n, "object": asdict(obj)}]}
    if kind == "remove":
        if n < 2:
            raise ValueError(f"remove: the scene must keep at least one object, it has {n}")
        i = int(rng.integers(n))
        removed = objs.pop(i)
        return Scene(tuple(objs)), {"kind": kind, "changes": [{"index": i, "object": asdict(removed)}]}
    if kind == "blank":
        return Scene(()), {"kind": kind, "changes": [{"index": i, "object": asdict(o)} for i, o in enumerate(objs)]}
    raise ValueError(f"unknown edit kind {kind!r}; valid kinds: {EDIT_KINDS}")


def make_pair(rng: np.random.Generator, n_objects: int | tuple[int, int] = (4, 6), kind: str = "replace_color",
              k: int = 2, size: int = 64, max_tries: int = 10) -> dict:
    """Sample a scene, edit it, render both.

    Returns ``{"original": Scene, "modified": Scene, "edit": dict, "image_original": PIL,
    "image_modified": PIL}``. Both images share the background jitter (drawn once from ``rng`` and
    replayed), so the only visible difference is the edit itself. For ``add`` a crowded original is
    resampled (up to ``max_tries`` times) when no free position exists.
    """
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; valid kinds: {EDIT_KINDS}")
    for attempt in range(max_tries):
        original = sample_scene(rng, n_objects)
        try:
            modified, edit = edit_scene(original, kind, rng, k=k)
            break
        except RuntimeError:
            if attempt == max_tries - 1:
                raise
    bg_seed = int(rng.integers(2**63))
    return {
        "original": original,
        "modified": modified,
        "edit": edit,
        "image_original": render_scene(original, size, np.random.default_rng(bg_seed)),
        "image_modified": render_scene(modified, size, np.random.default_rng(bg_seed)),
    }
