"""Classification task families for continual learning, with CLIP-style prompt templates.

Every family has class names and 3-6 templates (the first is canonical); a CLIP is scored zero-shot
by formatting each template with each class name (``TaskFamily.prompts``). Class names reuse the
caption vocabulary of ``language.py`` exactly (``object_phrase``, ``count_phrase``, ``relation_phrase``),
so a CLIP pre-trained on world captions has seen these words in these roles.

Families: ``shape``, ``color``, ``material``, ``size`` (one object whose attribute is the class),
``count`` (1-6 objects), ``relation`` and ``digits`` (sklearn's bundled handwritten digits).

Relation vocabulary: two objects of *different* shapes, at least ``RELATION_DX`` apart horizontally;
the class is the ordered shape pair read left to right, named "cube to the left of a sphere" (6
classes = the ordered pairs of the 3 shapes). Solving it needs both shapes and their left/right
order (cube|sphere vs sphere|cube differ only in order). Captions state such relations as
"a cube to the left of a sphere." (seed captions) and "the cube is to the left of the sphere" (dense).

Held-out splits: for the world families an image is drawn from a child generator seeded by
``SeedSequence([split_key, <4 words from the caller's rng>])`` with a different ``split_key`` for
train and test, so train, val and test streams never share random states (and with continuous positions,
never share scenes in practice). Digits split the 1,797 sklearn images 60/20/20 by a fixed permutation:
train, val and test images are disjoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .language import count_phrase, object_phrase, relation_phrase
from .render import check_size, render_scene
from .scene import ATTRIBUTE_VALUES, SHAPES, Scene, WorldConfigError, sample_scene

SPLITS = ("train", "val", "test")
_SPLIT_KEYS = {"train": 0x7A1, "val": 0x7A5, "test": 0x7E5}  # salts of the per-split seed spaces
RELATION_DX = 0.2
OBJECT_TEMPLATES = ("a photo of a {}.", "a rendering of a {}.", "a picture of a {}.", "an image of a {}.",
                    "a photo of the {}.")
COUNT_TEMPLATES = ("a photo of {}.", "a rendering of {}.", "a picture of {}.", "an image of {}.",
                   "a scene with {}.")
RELATION_TEMPLATES = ("a photo of a {}.", "a rendering of a {}.", "a picture of a {}.", "an image of a {}.",
                      "a scene with a {}.")
DIGIT_TEMPLATES = ('a photo of the number: "{}".', 'a photo of the digit: "{}".', 'a picture of the number "{}".',
                   'the handwritten number "{}".')
_RELATION_PAIRS = tuple((a, b) for a in SHAPES for b in SHAPES if a != b)


class UnknownTaskFamily(WorldConfigError, KeyError):
    """An unknown task family name: a :class:`models.errors.UserError` and, as before, a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _check_split(split: str, key: str = "split") -> str:
    if split not in SPLITS:
        raise WorldConfigError(f"{key}: must be one of {SPLITS}, got {split!r}")
    return split


def split_rng(rng: np.random.Generator, split: str) -> np.random.Generator:
    """A child generator in the seed space of ``split`` (see the module docstring)."""
    words = rng.integers(0, 2**32, size=4, dtype=np.uint64).tolist()
    return np.random.default_rng(np.random.SeedSequence([_SPLIT_KEYS[_check_split(split)], *words]))


@dataclass(frozen=True)
class TaskFamily:
    """A classification task: ``classnames`` (label = index) and prompt ``templates`` (first canonical).

    Subclasses implement :meth:`_render`; the base class handles labels, splits and prompts.
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)

    def prompts(self, label: int) -> list[str]:
        """Every template formatted with class ``label``'s name (canonical template first)."""
        return [t.format(self.classnames[label]) for t in self.templates]

    def sample(self, rng: np.random.Generator, image_size: int = 64, split: str = "train") -> tuple[Image.Image, int]:
        """A random ``(image, label)`` with a uniform label, from ``split``'s seed space / examples."""
        image, label, _ = self.sample_with_meta(rng, image_size, split)
        return image, label

    def sample_with_meta(self, rng: np.random.Generator, image_size: int = 64,
                         split: str = "train") -> tuple[Image.Image, int, dict]:
        """Like :meth:`sample`, plus a JSON-able description (scene dict or digit index)."""
        label = int(rng.integers(self.n_classes))
        image, meta = self._render(split_rng(rng, split), label, check_size(image_size), split, None)
        return image, label, meta

    def render_label(self, rng: np.random.Generator, label: int, image_size: int = 64, split: str = "train",
                     item: int | None = None) -> Image.Image:
        """An image of class ``label``. ``item`` picks the item-th example deterministically where the
        family has a finite pool (digits); world families ignore it."""
        return self.render_label_with_meta(rng, label, image_size, split, item)[0]

    def render_label_with_meta(self, rng: np.random.Generator, label: int, image_size: int = 64,
                               split: str = "train", item: int | None = None) -> tuple[Image.Image, dict]:
        """Like :meth:`render_label` (the same image for the same arguments), plus a JSON-able
        description: ``{"scene": ...}`` for world families, ``{"digit_index": ...}`` for digits."""
        if not 0 <= label < self.n_classes:
            raise ValueError(f"{self.name}: label {label} outside 0..{self.n_classes - 1}")
        return self._render(split_rng(rng, split), int(label), check_size(image_size), split, item)

    def _render(self, rng: np.random.Generator, label: int, size: int, split: str,
                item: int | None) -> tuple[Image.Image, dict]:
        raise NotImplementedError


def _scene_image(scene: Scene, rng: np.random.Generator, size: int) -> tuple[Image.Image, dict]:
    return render_scene(scene, size, rng), {"scene": scene.to_dict()}


@dataclass(frozen=True)
class AttributeFamily(TaskFamily):
    """One object; the class is the value of ``attr`` (shape, color, material or size)."""

    attr: str = "shape"

    def _render(self, rng, label, size, split, item):
        value = ATTRIBUTE_VALUES[self.attr][label]
        # sample_scene's value filters are the plural attribute names: shapes, colors, sizes, materials
        scene = sample_scene(rng, 1, **{self.attr + "s": (value,)})
        return _scene_image(scene, rng, size)


@dataclass(frozen=True)
class CountFamily(TaskFamily):
    """Exactly ``label + 1`` objects (1..6)."""

    def _render(self, rng, label, size, split, item):
        return _scene_image(sample_scene(rng, label + 1), rng, size)


@dataclass(frozen=True)
class RelationFamily(TaskFamily):
    """Two objects of different shapes; the class is the ordered (left, right) shape pair."""

    def _render(self, rng, label, size, split, item):
        left, right = _RELATION_PAIRS[label]
        for _ in range(100):  # rejection on the horizontal gap, typically 1-2 rounds
            scene = sample_scene(rng, 2)
            a, b = sorted(scene.objects, key=lambda o: o.x)
            if b.x - a.x >= RELATION_DX:
                break
        else:
            raise RuntimeError("relation: could not sample two well-separated objects")
        scene = Scene((a.replace(shape=left), b.replace(shape=right)))
        return _scene_image(scene, rng, size)


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """sklearn's digits: ``(images (1797, 8, 8) in 0..16, labels, {"train": idx, "val": idx, "test": idx})``.

    The split is 60/20/20 over a fixed permutation (seed 0), so it never changes between runs. Until
    2026-12-03 it was 80/20 train/test; the old test fifth (``perm[80%:]``), on which earlier toy settings
    were chosen, is now ``val``, and ``test`` is a fifth of the old training part that no evaluation had
    looked at (``docs/results/gift.md``)."""
    from sklearn.datasets import load_digits  # bundled with sklearn: no download

    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    a, b = int(round(0.6 * len(perm))), int(round(0.8 * len(perm)))
    return (d.images.astype(np.float32), d.target.astype(np.int64),
            {"train": perm[:a], "test": perm[a:b], "val": perm[b:]})


DIGIT_SCALE = 0.8  # the digit's 8x8 grid fills the central 80% of the image (sklearn's ink reaches the edges)


def digit_box(size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` that the 8x8 digit grid occupies in a ``size`` image."""
    inner = int(round(size * DIGIT_SCALE))
    lo = (size - inner) // 2
    return lo, lo, lo + inner, lo + inner


def digit_image(pixels: np.ndarray, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """An 8x8 sklearn digit (0..16) as a ``size`` px RGB image: dark ink on a light background
    (the world's look), upscaled bicubically into :func:`digit_box` with a blank margin around it;
    ``rng`` jitters the background and ink tones."""
    box = digit_box(size)
    small = Image.fromarray((np.clip(pixels / 16.0, 0, 1) * 255).astype(np.uint8), "L")
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(small.resize((box[2] - box[0], box[3] - box[1]), Image.BICUBIC), box[:2])
    ink = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    bg, fg = np.array([236, 236, 233], np.float32), np.array([30, 30, 40], np.float32)
    if rng is not None:
        bg = bg + rng.integers(-10, 11)
        fg = fg + rng.integers(-20, 21, size=3)
    arr = bg * (1 - ink) + fg * ink
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class DigitsFamily(TaskFamily):
    """Handwritten digits 0-9 from ``sklearn.datasets.load_digits`` with a disjoint train/test split."""

    def examples(self, label: int, split: str) -> np.ndarray:
        """Indices into sklearn's digits of class ``label`` in ``split`` (fixed order)."""
        _, targets, splits = digits_data()
        idx = splits[_check_split(split)]
        return idx[targets[idx] == label]

    def _render(self, rng, label, size, split, item):
        images, _, _ = digits_data()
        pool = self.examples(label, split)
        k = int(rng.integers(len(pool))) if item is None else item % len(pool)
        return digit_image(images[pool[k]], size, rng), {"digit_index": int(pool[k])}


def _object_classes(attr: str) -> tuple[str, ...]:
    return tuple(object_phrase({attr: v}, (attr,)) for v in ATTRIBUTE_VALUES[attr])


TASK_FAMILIES: dict[str, TaskFamily] = {
    "shape": AttributeFamily("shape", SHAPES, OBJECT_TEMPLATES, attr="shape"),
    "color": AttributeFamily("color", _object_classes("color"), OBJECT_TEMPLATES, attr="color"),
    "count": CountFamily("count", tuple(count_phrase(n) for n in range(1, 7)), COUNT_TEMPLATES),
    "material": AttributeFamily("material", _object_classes("material"), OBJECT_TEMPLATES, attr="material"),
    "size": AttributeFamily("size", _object_classes("size"), OBJECT_TEMPLATES, attr="size"),
    "relation": RelationFamily("relation", tuple(relation_phrase(a, b) for a, b in _RELATION_PAIRS),
                               RELATION_TEMPLATES),
    "digits": DigitsFamily("digits", tuple(str(d) for d in range(10)), DIGIT_TEMPLATES),
}


def get_task_family(name: str, key: str | None = None) -> TaskFamily:
    """The registered family ``name``; :class:`UnknownTaskFamily` (a KeyError) listing the valid names
    otherwise, naming the argument ``key`` (e.g. ``"TaskSamples.family"``) when given."""
    try:
        return TASK_FAMILIES[name]
    except (KeyError, TypeError):
        where = f"{key}: " if key else ""
        raise UnknownTaskFamily(f"{where}unknown task family {name!r}; valid: {sorted(TASK_FAMILIES)}") from None


def scene_classname(family: TaskFamily | str, scene: Scene) -> str | None:
    """The class name of ``family`` that truthfully describes ``scene``, or None when the family does
    not apply (e.g. a shape class for a multi-object scene). Used to mix prompt-style captions into
    the pre-training stream."""
    name = family if isinstance(family, str) else family.name
    objs = scene.objects
    if name in ("shape", "color", "material", "size"):
        return object_phrase(objs[0], (name,)) if len(objs) == 1 else None
    if name == "count":
        return count_phrase(len(objs)) if 1 <= len(objs) <= 6 else None
    if name == "relation" and len(objs) == 2:
        a, b = sorted(objs, key=lambda o: o.x)
        return relation_phrase(a.shape, b.shape) if a.shape != b.shape else None
    return None


def build_eval_set(family: TaskFamily | str, n_per_class: int, seed: int, image_size: int = 64,
                   split: str = "test") -> tuple[list[Image.Image], list[int]]:
    """A balanced, deterministic evaluation set: ``n_per_class`` images per class, class-major order.

    Image ``i`` of class ``c`` comes from ``SeedSequence([seed, c, i])`` in ``split``'s seed space, so
    the set depends only on its arguments. Digits take the ``i``-th test example of each class (cycling
    past the ~36 test images per class)."""
    fam = get_task_family(family) if isinstance(family, str) else family
    images, labels = [], []
    for c in range(fam.n_classes):
        for i in range(n_per_class):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), c, i]))
            images.append(fam.render_label(rng, c, image_size, split, item=i))
            labels.append(c)
    return images, labels
