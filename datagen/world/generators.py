"""Sample generators over the world for the online stream (``datagen.stream.GeneratorStream``).

Each generator's ``generate(rng, index)`` is a pure function of its arguments, and ``validate(sample)``
returns a reason string for a malformed sample (wrong image size, empty text...) or None.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from PIL import Image

from datagen.generator import SampleGenerator

from .edits import EDIT_KINDS, make_pair
from .language import dense_caption, qa_pairs, seed_caption
from .render import check_size, render_scene
from .scene import WorldConfigError, check_n_objects, check_probability, sample_scene
from .tasks import TASK_FAMILIES, _check_split, get_task_family, scene_classname

CAPTION_MODES = ("seed", "dense", "mix")
PROMPT_FAMILIES = ("shape", "color", "material", "size", "count", "relation")


def _image_problem(image, size: int, key: str = "image") -> str | None:
    if not isinstance(image, Image.Image):
        return f"{key} is {type(image).__name__}, not a PIL image"
    if image.mode != "RGB" or image.size != (size, size):
        return f"{key} is {image.mode} {image.size}, expected RGB ({size}, {size})"
    return None


def _text_problem(text, key: str = "txt") -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"{key} is empty or not a string"
    return None


def _count_probs(n_objects: int | tuple[int, int], weights: list[float] | None,
                 key: str = "count_weights") -> np.ndarray | None:
    """Normalised probabilities of the object counts lo..hi (None = uniform)."""
    if weights is None:
        return None
    lo, hi = check_n_objects(n_objects)
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or len(w) != hi - lo + 1 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise WorldConfigError(f"{key}: needs {hi - lo + 1} non-negative weights (one per count {lo}..{hi} of "
                               f"n_objects), not all zero, got {list(weights)!r}")
    return w / w.sum()


def _check_positive(value, key: str, *, allow_none: bool = False) -> int | None:
    """An int >= 1 (or None when ``allow_none``), else a :class:`WorldConfigError` naming ``key``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        none = " or null" if allow_none else ""
        raise WorldConfigError(f"{key}: must be an integer >= 1{none}, got {value!r}")
    return int(value)


class WorldCaptions(SampleGenerator):
    """Image-caption pairs for CLIP pre-training.

    ``caption``: "seed" (short sparse captions), "dense" (exhaustive) or "mix" (dense with probability
    ``dense_prob``). Among non-dense captions a fraction ``prompt_prob`` is a task-family prompt that
    truthfully describes the scene ("a photo of a red object.", "a picture of two objects.", "a photo
    of a cube to the left of a sphere."), so the zero-shot prompts are in-distribution text; those
    carry ``"caption_type": "seed"`` and ``"prompt_family"`` in the json.

    ``count_weights`` (one weight per object count in ``n_objects``) skews the scene sizes. Why it
    matters: in multi-object scenes colour alone tells captions apart within a batch, so a CLIP
    trained only on them never grounds shape words (measured: zero-shot shape at chance after 300
    steps with uniform 1-6 objects); single-object scenes make shape necessary.
    """

    def __init__(self, image_size: int = 64, n_objects: int | tuple[int, int] = (1, 3), caption: str = "mix",
                 dense_prob: float = 0.5, prompt_prob: float = 0.25,
                 count_weights: list[float] | None = None) -> None:
        if caption not in CAPTION_MODES:
            raise WorldConfigError(f"WorldCaptions.caption: must be one of {CAPTION_MODES}, got {caption!r}")
        self.image_size = check_size(image_size, "WorldCaptions.image_size")
        check_n_objects(n_objects, "WorldCaptions.n_objects")
        self.n_objects, self.caption = n_objects, caption
        self.count_weights = _count_probs(n_objects, count_weights, "WorldCaptions.count_weights")
        self.dense_prob = check_probability(dense_prob, "WorldCaptions.dense_prob")
        self.prompt_prob = check_probability(prompt_prob, "WorldCaptions.prompt_prob")

    def _prompt(self, scene, rng: np.random.Generator) -> tuple[str, str] | None:
        """A (family, prompt) that describes ``scene``, or None when no family applies."""
        options = [(f, c) for f in PROMPT_FAMILIES if (c := scene_classname(f, scene)) is not None]
        if not options:
            return None
        family, classname = options[int(rng.integers(len(options)))]
        templates = TASK_FAMILIES[family].templates
        return family, templates[int(rng.integers(len(templates)))].format(classname)

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One sample: ``{"image", "txt", "json": {"scene", "index", "caption_type", "prompt_family"}}``."""
        n_objects = self.n_objects
        if self.count_weights is not None:
            lo = n_objects if isinstance(n_objects, int) else n_objects[0]
            n_objects = lo + int(rng.choice(len(self.count_weights), p=self.count_weights))
        scene = sample_scene(rng, n_objects)
        image = render_scene(scene, self.image_size, rng)
        dense = self.caption == "dense" or (self.caption == "mix" and rng.random() < self.dense_prob)
        family = None
        if dense:
            txt = dense_caption(scene)
        else:
            prompt = self._prompt(scene, rng) if rng.random() < self.prompt_prob else None
            family, txt = prompt if prompt is not None else (None, seed_caption(scene, rng))
        meta = {"scene": scene.to_dict(), "index": int(index), "caption_type": "dense" if dense else "seed",
                "prompt_family": family}
        return {"image": image, "txt": txt, "json": meta}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        return _image_problem(sample.get("image"), self.image_size) or _text_problem(sample.get("txt"))


class WorldQA(SampleGenerator):
    """Images with their dense caption and question-answer pairs (one per answerable question type)."""

    def __init__(self, image_size: int = 64, n_objects: int | tuple[int, int] = (2, 6), n_questions: int | None = None):
        self.image_size = check_size(image_size, "WorldQA.image_size")
        check_n_objects(n_objects, "WorldQA.n_objects")
        self.n_objects = n_objects
        self.n_questions = _check_positive(n_questions, "WorldQA.n_questions", allow_none=True)

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One sample: ``{"image", "txt": dense caption, "json": {"scene", "qa": [QA as dict...], "index"}}``."""
        scene = sample_scene(rng, self.n_objects)
        image = render_scene(scene, self.image_size, rng)
        qa = [asdict(q) for q in qa_pairs(scene, rng, self.n_questions)]
        return {"image": image, "txt": dense_caption(scene),
                "json": {"scene": scene.to_dict(), "qa": qa, "index": int(index)}}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        if not sample.get("json", {}).get("qa"):
            return "no questions"
        return _image_problem(sample.get("image"), self.image_size) or _text_problem(sample.get("txt"))


class WorldPairs(SampleGenerator):
    """Minimally edited image pairs; the edit kind is drawn uniformly from ``kinds`` per sample.

    ``blank`` is valid but not in the default kinds (a blank target carries little signal)."""

    def __init__(self, image_size: int = 64, n_objects: int | tuple[int, int] = (4, 6),
                 kinds: tuple[str, ...] = ("replace_shape", "replace_color", "replace_shape_color", "add", "remove"),
                 k: int = 2) -> None:
        bad = [x for x in kinds if x not in EDIT_KINDS]
        if bad or not kinds:
            raise WorldConfigError(f"WorldPairs.kinds: {'unknown edit kinds ' + repr(bad) if bad else 'empty'}; "
                                   f"give some of {EDIT_KINDS}")
        self.image_size = check_size(image_size, "WorldPairs.image_size")
        lo, hi = check_n_objects(n_objects, "WorldPairs.n_objects")
        # every sampled scene must admit every edit kind, else a share of the samples is dropped (or all)
        need = 2 if "remove" in kinds else 1 if any(x.startswith("replace") for x in kinds) else 0
        if lo < need:
            which = "'remove' keeps at least one object" if need == 2 else "the replace kinds need an object"
            raise WorldConfigError(f"WorldPairs.n_objects: scenes of {lo} object(s) cannot be edited ({which}); "
                                   f"raise the lower bound to {need} or drop those kinds")
        self.n_objects, self.kinds, self.k = n_objects, tuple(kinds), _check_positive(k, "WorldPairs.k")

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One sample: ``{"image_original", "image_modified", "json": {"edit", "original", "modified", "index"}}``."""
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        pair = make_pair(rng, self.n_objects, kind=kind, k=self.k, size=self.image_size)
        meta = {"edit": pair["edit"], "original": pair["original"].to_dict(),
                "modified": pair["modified"].to_dict(), "index": int(index)}
        return {"image_original": pair["image_original"], "image_modified": pair["image_modified"], "json": meta}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        return (_image_problem(sample.get("image_original"), self.image_size, "image_original")
                or _image_problem(sample.get("image_modified"), self.image_size, "image_modified")
                or (None if sample.get("json", {}).get("edit", {}).get("changes") else "edit has no changes"))


class TaskSamples(SampleGenerator):
    """Labelled samples of one task family (continual-learning training streams)."""

    def __init__(self, family: str, image_size: int = 64, split: str = "train") -> None:
        self.family = get_task_family(family, "TaskSamples.family")
        self.image_size = check_size(image_size, "TaskSamples.image_size")
        self.split = _check_split(split, "TaskSamples.split")

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One sample: ``{"image", "label", "txt": canonical prompt, "json": {family, split, classname, ...}}``."""
        image, label, meta = self.family.sample_with_meta(rng, self.image_size, self.split)
        meta = {"family": self.family.name, "split": self.split, "label": label,
                "classname": self.family.classnames[label], "index": int(index), **meta}
        return {"image": image, "label": label, "txt": self.family.templates[0].format(self.family.classnames[label]),
                "json": meta}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        label = sample.get("label")
        if not isinstance(label, int) or not 0 <= label < self.family.n_classes:
            return f"label {label!r} outside 0..{self.family.n_classes - 1}"
        return _image_problem(sample.get("image"), self.image_size) or _text_problem(sample.get("txt"))
