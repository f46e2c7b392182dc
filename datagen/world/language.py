"""Text from scene graphs: noun phrases, sparse and dense captions, relation wording.

The vocabulary is shared with the classification task families (``tasks.py``) on purpose: a CLIP
pre-trained on these captions is evaluated zero-shot with the families' prompts, so captions use the
same words -- attribute order "size colour material shape" ("a small red metal cube"), "object" as
the noun when the shape is not named ("a red object", "a metal object"), number words for counts
("three objects"), and "X to the left of a Y" for horizontal relations.

Questions (:func:`qa_pairs`) are built from the same scene graph, so answers are exact by
construction, and only refer to objects that the question's description singles out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .scene import ATTRIBUTE_VALUES, ATTRIBUTES, COLORS, SHAPES, Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Attribute subsets tried, in order, when looking for the shortest unique description of an object.
_REFERRING_ATTRS: tuple[tuple[str, ...], ...] = (
    ("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("material", "shape"),
    ("size", "color", "shape"), ("color", "material", "shape"), ("size", "material", "shape"),
    ("size", "color", "material", "shape"),
)


def article(word: str) -> str:
    """English indefinite article for ``word`` ("a" or "an")."""
    return "an" if word[:1] in "aeiou" else "a"


def number_word(n: int) -> str:
    """``n`` in words for 0..10, digits above."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_phrase(n: int) -> str:
    """"one object", "three objects": the count family's class names use exactly this."""
    return f"{number_word(n)} object" + ("" if n == 1 else "s")


def plural(noun: str) -> str:
    """Plural of a shape noun or "object" (all regular in this vocabulary)."""
    return noun + "s"


def object_phrase(obj: SceneObject | dict, attrs: Sequence[str] = ATTRIBUTES, det: str = "") -> str:
    """Noun phrase for ``obj`` naming ``attrs`` in canonical order (size, colour, material, shape).

    Without "shape" in ``attrs`` the noun is "object". ``det`` is prepended: "a" picks the right
    article, any other string is used verbatim ("the", ""). Example: ``object_phrase(o, det="a")`` ->
    "a small red metal cube"; ``object_phrase(o, ("color",))`` -> "red object".
    """
    get = obj.get if isinstance(obj, dict) else obj.attr
    words = [get(a) for a in ATTRIBUTES if a in attrs and a != "shape"]
    words.append(get("shape") if "shape" in attrs else "object")
    phrase = " ".join(words)
    if det == "a":
        return f"{article(phrase)} {phrase}"
    return f"{det} {phrase}" if det else phrase


def matches(obj: SceneObject, attrs: Sequence[str], ref: SceneObject) -> bool:
    """Whether ``obj`` agrees with ``ref`` on every attribute in ``attrs``."""
    return all(obj.attr(a) == ref.attr(a) for a in attrs)


def referring_attrs(scene: Scene, i: int, exclude: Sequence[str] = ()) -> tuple[str, ...] | None:
    """Shortest attribute subset (from a fixed list) that singles out object ``i`` in ``scene``.

    Subsets containing an attribute in ``exclude`` are skipped (e.g. when asking for that
    attribute). Returns None when no subset is unique (an identical twin exists).
    """
    target = scene.objects[i]
    for attrs in _REFERRING_ATTRS:
        if any(a in exclude for a in attrs):
            continue
        if sum(matches(o, attrs, target) for o in scene.objects) == 1:
            return attrs
    return None


# -- relations ------------------------------------------------------------------------------------

def horizontal_relation(a: SceneObject, b: SceneObject) -> str:
    """"to the left of" or "to the right of": where ``a`` is relative to ``b`` (by centre x)."""
    return "to the left of" if a.x < b.x else "to the right of"


def depth_relation(a: SceneObject, b: SceneObject) -> str:
    """"behind" or "in front of": where ``a`` is relative to ``b`` (larger y is in front)."""
    return "in front of" if a.y > b.y else "behind"


def relation_phrase(left_shape: str, right_shape: str) -> str:
    """Class-name style relation: "cube to the left of a sphere" (shared with the relation family)."""
    return f"{left_shape} to the left of {article(right_shape)} {right_shape}"


# -- captions -----------------------------------------------------------------------------------

def dense_caption(scene: Scene) -> str:
    """Exhaustive, deterministic description: count, every object with all attributes (listed left
    to right), then for each pair its horizontal and depth relation.

    Example: "there are two objects: a large red metal cube and a small blue rubber sphere. the red
    cube is to the left of the blue sphere and behind it." Objects in relations are named by their
    shortest unique description; pairs involving an object with an identical twin are skipped.
    """
    objs = sorted(scene.objects, key=lambda o: o.x)
    n = len(objs)
    if n == 0:
        return "there are no objects."
    phrases = [object_phrase(o, det="a") for o in objs]
    if n == 1:
        return f"there is one object: {phrases[0]}."
    listed = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    sentences = [f"there are {count_phrase(n)}: {listed}."]
    ordered = Scene(tuple(objs))
    refs = [referring_attrs(ordered, i) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if refs[i] is None or refs[j] is None:
                continue
            a, b = objs[i], objs[j]  # a.x < b.x by the sort
            sentences.append(f"{object_phrase(a, refs[i], 'the')} is {horizontal_relation(a, b)} "
                             f"{object_phrase(b, refs[j], 'the')} and {depth_relation(a, b)} it.")
    return " ".join(sentences)


def _random_attrs(rng: np.random.Generator) -> tuple[str, ...]:
    """A random non-empty attribute subset for a short phrase (shape included most of the time)."""
    pool = [a for a in ATTRIBUTES if rng.random() < 0.45]
    if rng.random() < 0.75 and "shape" not in pool:
        pool.append("shape")
    return tuple(pool) or (str(rng.choice(ATTRIBUTES)),)


_SINGLE_TEMPLATES = ("a photo of {}.", "{}.", "a picture of {}.", "a rendering of {}.", "an image of {}.",
                     "there is {}.", "a simple scene with {}.")
_PAIR_TEMPLATES = ("{} and {}.", "a photo of {} and {}.", "{} next to {}.", "a picture of {} and {}.")
_COUNT_TEMPLATES = ("there are {}.", "a photo of {}.", "{}.", "a picture of {}.", "a scene with {}.",
                    "a rendering of {}.", "an image of {}.")


def seed_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A short, sparse caption in a random style: one object, two objects, the count, or a relation.

    Mentions a subset of attributes for one or two objects ("a photo of a red cube."), the count
    ("there are three objects."), or a horizontal relation between two uniquely-shaped objects
    ("a cube to the left of a sphere."). Everything stated is true of the scene.
    """
    objs = scene.objects
    n = len(objs)
    if n == 0:
        return str(rng.choice(("an empty scene.", "a photo of an empty table.", "there are no objects.")))
    styles = ["one", "count"] + (["two", "relation"] if n >= 2 else [])
    style = styles[int(rng.integers(len(styles)))]
    if style == "count":
        t = _COUNT_TEMPLATES[int(rng.integers(len(_COUNT_TEMPLATES)))]
        phrase = count_phrase(n)
        if n == 1 and t.startswith("there are"):
            t = "there is {}."
        return t.format(phrase)
    if style == "relation":
        i, j = sorted(rng.choice(n, size=2, replace=False).tolist(), key=lambda k: objs[k].x)
        a, b = objs[i], objs[j]
        shapes = [o.shape for o in objs]
        if shapes.count(a.shape) == 1 and shapes.count(b.shape) == 1:
            rel = relation_phrase(a.shape, b.shape)
            return f"{article(rel)} {rel}." if rng.random() < 0.5 else f"a photo of {article(rel)} {rel}."
        style = "two"  # shapes not unique: a relation caption could be ambiguous, describe the pair
    if style == "two":
        i, j = rng.choice(n, size=2, replace=False).tolist()
        t = _PAIR_TEMPLATES[int(rng.integers(len(_PAIR_TEMPLATES)))]
        return t.format(object_phrase(objs[i], _random_attrs(rng), "a"), object_phrase(objs[j], _random_attrs(rng), "a"))
    obj = objs[int(rng.integers(n))]
    t = _SINGLE_TEMPLATES[int(rng.integers(len(_SINGLE_TEMPLATES)))]
    return t.format(object_phrase(obj, _random_attrs(rng), "a"))


# -- question answering ---------------------------------------------------------------------------

QTYPES = ("count", "color", "shape", "exist", "relation")
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class QA:
    """One question with its exact answer; ``choices`` lists the closed answer set."""

    question: str
    answer: str
    qtype: str
    choices: tuple[str, ...] | None = None


def _ref(scene: Scene, i: int, exclude: Sequence[str], rng: np.random.Generator) -> str | None:
    """"the red object", "the leftmost cube"...: a description singling out object ``i`` that does
    not use the attributes in ``exclude``; None when there is none."""
    attrs = referring_attrs(scene, i, exclude)
    if attrs is not None and rng.random() < 0.8:
        return object_phrase(scene.objects[i], attrs, "the")
    xs = sorted(o.x for o in scene.objects)  # x values are distinct (relation margin)
    obj = scene.objects[i]
    if obj.x == xs[0] or obj.x == xs[-1]:
        return f"the {'leftmost' if obj.x == xs[0] else 'rightmost'} object"
    return object_phrase(obj, attrs, "the") if attrs is not None else None


def _count_q(scene: Scene, rng: np.random.Generator) -> QA:
    objs = scene.objects
    attrs = [a for a in ("size", "color", "material", "shape") if rng.random() < 0.35]
    if objs and rng.random() < 0.7:  # filter values taken from a real object: non-zero counts are common
        ref = objs[int(rng.integers(len(objs)))]
        values = {a: ref.attr(a) for a in attrs}
    else:
        values = {a: str(rng.choice(ATTRIBUTE_VALUES[a])) for a in attrs}
    count = sum(all(o.attr(a) == v for a, v in values.items()) for o in objs)
    phrase = plural(object_phrase(values, attrs)) if attrs else "objects"
    return QA(f"how many {phrase} are there?", str(count), "count",
              tuple(str(k) for k in range(max(6, len(objs)) + 1)))


def _attribute_q(scene: Scene, rng: np.random.Generator, asked: str) -> QA | None:
    n = len(scene.objects)
    for i in rng.permutation(n).tolist():
        ref = _ref(scene, i, (asked,), rng)
        if ref is not None:
            word = "color" if asked == "color" else "shape"
            return QA(f"what {word} is {ref}?", scene.objects[i].attr(asked), asked,
                      COLORS if asked == "color" else SHAPES)
    return None


def _exist_q(scene: Scene, rng: np.random.Generator) -> QA:
    objs = scene.objects
    attrs = [a for a in ("size", "color", "material") if rng.random() < 0.4] + ["shape"]
    if objs and rng.random() < 0.5:
        ref = objs[int(rng.integers(len(objs)))]
        values = {a: ref.attr(a) for a in attrs}
    else:
        values = {a: str(rng.choice(ATTRIBUTE_VALUES[a])) for a in attrs}
    exists = any(all(o.attr(a) == v for a, v in values.items()) for o in objs)
    return QA(f"is there {object_phrase(values, attrs, 'a')}?", "yes" if exists else "no", "exist", YES_NO)


_RELATIONS = ("to the left of", "to the right of", "in front of", "behind")


def _relation_q(scene: Scene, rng: np.random.Generator) -> QA | None:
    n = len(scene.objects)
    if n < 2:
        return None
    refs = [referring_attrs(scene, i) for i in range(n)]
    ok = [i for i in range(n) if refs[i] is not None]
    if len(ok) < 2:
        return None
    i, j = rng.choice(ok, size=2, replace=False).tolist()
    a, b = scene.objects[i], scene.objects[j]
    rel = _RELATIONS[int(rng.integers(len(_RELATIONS)))]
    truth = rel in (horizontal_relation(a, b), depth_relation(a, b))
    q = f"is {object_phrase(a, refs[i], 'the')} {rel} {object_phrase(b, refs[j], 'the')}?"
    return QA(q, "yes" if truth else "no", "relation", YES_NO)


def _make_q(scene: Scene, rng: np.random.Generator, qtype: str) -> QA | None:
    if qtype == "count":
        return _count_q(scene, rng)
    if qtype in ("color", "shape"):
        return _attribute_q(scene, rng, qtype) if scene.objects else None
    if qtype == "exist":
        return _exist_q(scene, rng)
    return _relation_q(scene, rng)


def qa_pairs(scene: Scene, rng: np.random.Generator, n: int | None = None) -> list[QA]:
    """Questions about ``scene`` with exact answers.

    ``n=None``: one question of each type in ``QTYPES`` order (types that cannot be asked, e.g. a
    relation in a one-object scene, are skipped). Otherwise up to ``n`` distinct questions with
    types drawn uniformly (fewer when the scene does not allow ``n`` distinct ones).
    Questions only refer to objects their description singles out, so every answer is unambiguous.
    """
    if n is None:
        out = [_make_q(scene, rng, t) for t in QTYPES]
        return [q for q in out if q is not None]
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(4 * n):  # bounded: small scenes may not have n distinct questions
        if len(out) >= n:
            break
        q = _make_q(scene, rng, QTYPES[int(rng.integers(len(QTYPES)))])
        if q is not None and q.question not in seen:
            seen.add(q.question)
            out.append(q)
    return out
