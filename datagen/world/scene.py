"""Scene graphs of the procedural world: objects with discrete attributes on a unit square.

Coordinates: ``x`` in [0, 1] runs left -> right, ``y`` in [0, 1] runs behind -> front (larger ``y`` is
lower in the image, i.e. closer to the viewer, as on a table seen from above and in front).

Every object has a *bounding radius* (:func:`object_radius`, a fraction of the image side) that
encloses its glyph whatever the shape; the sampler keeps bounding discs apart, so glyphs never
overlap at any resolution.

Spatial relations are defined on centres and are unambiguous by construction: any two objects of a
sampled scene differ by at least ``RELATION_MARGIN`` in ``x`` *and* in ``y``, so "A is left of B"
(``A.x < B.x``) and "A is behind B" (``A.y < B.y``) always hold one way or the other with a visible gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.errors import UserError

SHAPES = ("cube", "sphere", "cylinder")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SIZES = ("small", "large")
MATERIALS = ("rubber", "metal")

ATTRIBUTES = ("size", "color", "material", "shape")  # canonical word order in phrases
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}

# Bounding radius as a fraction of the image side. Sized so that 6 large objects still fit with the
# relation margins below (rejection sampling succeeds quickly; see tests).
RADIUS = {"small": 0.10, "large": 0.15}
GAP = 0.015  # extra clearance between bounding discs, so glyphs never touch after anti-aliasing
RELATION_MARGIN = 0.06  # minimum |dx| and |dy| between any two objects (relations read unambiguously)
MAX_OBJECTS = 6


@dataclass(frozen=True)
class SceneObject:
    """One object: discrete attributes and a centre position in the unit square."""

    shape: str
    color: str
    size: str
    material: str
    x: float
    y: float

    def attr(self, name: str) -> str:
        """The value of attribute ``name`` ("shape", "color", "size" or "material")."""
        return getattr(self, name)

    def replace(self, **changes: Any) -> "SceneObject":
        """A copy with some fields changed (positions and attributes are validated on the copy)."""
        d = asdict(self)
        d.update(changes)
        return SceneObject(**d)

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTE_VALUES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"SceneObject.{name}={getattr(self, name)!r} is not one of {values}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"SceneObject position ({self.x}, {self.y}) is outside the unit square")


@dataclass
class Scene:
    """An ordered collection of objects (order is the sampling order, not the drawing order)."""

    objects: tuple[SceneObject, ...] = ()

    def __post_init__(self) -> None:
        self.objects = tuple(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict:
        """A JSON-able dict: ``{"objects": [{"shape": ..., ..., "x": ..., "y": ...}, ...]}``."""
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(SceneObject(**o) for o in d["objects"]))


def object_radius(obj: SceneObject) -> float:
    """Bounding radius of ``obj`` as a fraction of the image side."""
    return RADIUS[obj.size]


def position_ok(others: tuple[SceneObject, ...] | list[SceneObject], size: str, x: float, y: float,
                relation_margin: float = RELATION_MARGIN) -> bool:
    """Whether an object of ``size`` centred at (x, y) is inside the canvas, clear of ``others`` and
    at least ``relation_margin`` away from each of them in both x and y."""
    r = RADIUS[size]
    if not (r <= x <= 1 - r and r <= y <= 1 - r):
        return False
    for o in others:
        dx, dy = x - o.x, y - o.y
        if abs(dx) < relation_margin or abs(dy) < relation_margin:
            return False
        min_d = r + RADIUS[o.size] + GAP
        if dx * dx + dy * dy < min_d * min_d:
            return False
    return True


def free_position(rng: np.random.Generator, others, size: str, tries: int = 200,
                  relation_margin: float = RELATION_MARGIN) -> tuple[float, float] | None:
    """A random admissible centre for a new object of ``size``, or None after ``tries`` rejections.

    Candidates are drawn in one vectorised batch (cheaper than one rng call per try)."""
    r = RADIUS[size]
    # Rounded (short JSON) *before* the checks, so stored positions satisfy every constraint exactly.
    cand = np.round(rng.uniform(r, 1 - r, size=(tries, 2)), 4)
    for x, y in cand.tolist():
        if position_ok(others, size, x, y, relation_margin):
            return x, y
    return None


class WorldConfigError(UserError, ValueError):
    """A world or generator argument out of range: a :class:`models.errors.UserError` (one line naming the
    argument, ``Class.argument: what is wrong; what to do``), and a ``ValueError`` for callers that catch that."""


def check_n_objects(n_objects: Any, key: str = "n_objects") -> tuple[int, int]:
    """``n_objects`` (an exact count or an inclusive ``[lo, hi]`` range) as ``(lo, hi)``; a value out of
    0..MAX_OBJECTS or an unordered range is a :class:`WorldConfigError` naming ``key``."""
    want = f"give a count or an ordered range [lo, hi] with 0 <= lo <= hi <= {MAX_OBJECTS}"
    if isinstance(n_objects, (bool, np.bool_)):
        raise WorldConfigError(f"{key}: {n_objects!r} is not an object count; {want}")
    if isinstance(n_objects, (int, np.integer)):
        lo = hi = int(n_objects)
    else:
        try:
            lo, hi = (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else None
                      for v in n_objects)
        except (TypeError, ValueError):
            lo = hi = None
        if lo is None or hi is None:
            raise WorldConfigError(f"{key}: {_shown(n_objects)} is not an object count; {want}")
    if lo > hi:
        raise WorldConfigError(f"{key}: {_shown(n_objects)} is not an ordered range (lo {lo} > hi {hi}); {want}")
    if not 0 <= lo <= hi <= MAX_OBJECTS:
        raise WorldConfigError(f"{key}: {_shown(n_objects)} is outside 0..{MAX_OBJECTS}; {want}")
    return lo, hi


def check_probability(value: Any, key: str) -> float:
    """``value`` as a float in [0, 1], or a :class:`WorldConfigError` naming ``key``."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:  # NaN fails too
        raise WorldConfigError(f"{key}: {value!r} is not a probability; give a number in 0..1")
    return p


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _n_range(n_objects: int | tuple[int, int]) -> tuple[int, int]:
    return check_n_objects(n_objects)


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | tuple[int, int] = (2, 6),
    shapes: tuple[str, ...] = SHAPES,
    colors: tuple[str, ...] = COLORS,
    sizes: tuple[str, ...] = SIZES,
    materials: tuple[str, ...] = MATERIALS,
    relation_margin: float = RELATION_MARGIN,
    max_restarts: int = 100,
) -> Scene:
    """Sample a random scene, deterministically from ``rng``.

    ``n_objects`` is an exact count or an inclusive range ``(lo, hi)`` drawn uniformly. Attributes are
    uniform over the given value tuples. Positions are rejection-sampled so that bounding discs never
    overlap and every pair of objects is at least ``relation_margin`` apart in x and in y. When a
    partial layout leaves no room, the whole layout is redrawn (up to ``max_restarts`` times); every
    20 failed layouts one large object becomes small, so crowded scenes of large objects still fit.
    """
    lo, hi = _n_range(n_objects)
    n = int(rng.integers(lo, hi + 1))
    # Attributes first, in one batch per attribute: layouts depend on sizes but attributes never
    # depend on layouts, so restarts do not change what objects the scene holds.
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), size=n)]  # noqa: E731
    shp, col, siz, mat = pick(shapes), pick(colors), pick(sizes), pick(materials)
    # Place large objects first: they are the hard ones to fit.
    order = sorted(range(n), key=lambda i: siz[i] != "large")
    for attempt in range(max_restarts):
        if attempt and attempt % 20 == 0 and "large" in siz:
            # A crowd of large objects may not fit at all: shrink one (the last large one) and go on.
            siz[max(i for i in range(n) if siz[i] == "large")] = "small"
        placed: list[SceneObject | None] = [None] * n
        done: list[SceneObject] = []
        for i in order:
            pos = free_position(rng, done, siz[i], relation_margin=relation_margin)
            if pos is None:
                break
            obj = SceneObject(shp[i], col[i], siz[i], mat[i], *pos)
            placed[i] = obj
            done.append(obj)
        else:
            return Scene(tuple(placed))  # type: ignore[arg-type]
    raise RuntimeError(f"could not place {n} objects (sizes {siz}) after {max_restarts} restarts")
