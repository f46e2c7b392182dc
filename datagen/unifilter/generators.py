"""UniFilter's training data as online generators: image-caption pairs and interleaved documents with exact
quality labels 0..3 (:mod:`.levels`).

Held-out data: every scene is drawn from :func:`datagen.world.tasks.split_rng` of the sample's rng, i.e. from
the seed space of ``split`` (``SeedSequence([split_key, ...])`` with one key per split of
:data:`datagen.world.tasks.SPLITS`). A ``split="val"`` or ``"test"`` generator therefore never shares a random
state with a ``"train"`` one, whatever the seeds and indices, and, with continuous object positions, never a
scene in practice (the tests check no scene graph is shared).

Levels: by default exactly balanced, ``level = index % 4`` (any 4 consecutive stream indices hold each level
once); ``level_weights`` draws the level at random instead.
"""

from __future__ import annotations

import numpy as np

from datagen.generator import SampleGenerator
from datagen.world.generators import _image_problem, _text_problem
from datagen.world.render import check_size, render_scene
from datagen.world.scene import WorldConfigError, check_n_objects, sample_scene
from datagen.world.tasks import SPLITS, split_rng

from .levels import LEVELS, MAX_CHANGES, TEXT_MODES, caption_at_level, describe


def _check_choice(value, choices, key: str):
    if value not in choices:
        raise WorldConfigError(f"{key}: must be one of {choices}, got {value!r}")
    return value


def _level_probs(weights, key: str) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(LEVELS),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise WorldConfigError(f"{key}: needs 4 non-negative weights (levels 0, 1, 2, 3), not all zero, "
                               f"got {weights!r}; or null for exactly balanced levels")
    return w / w.sum()


def _check_max_changes(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise WorldConfigError(f"{key}: must be an integer >= 2 (level 1 changes at least two attributes), "
                               f"got {value!r}")
    return int(value)


def _draw_level(rng: np.random.Generator, index: int, probs: np.ndarray | None) -> int:
    return int(index) % len(LEVELS) if probs is None else int(rng.choice(len(LEVELS), p=probs))


def _check_level(score, key: str = "score") -> str | None:
    if isinstance(score, bool) or not isinstance(score, (int, np.integer)) or int(score) not in LEVELS:
        return f"{key} {score!r} is not one of the levels {LEVELS}"
    return None


def _set_common(gen, owner: str, image_size, n_objects, split, text_mode, level_weights, max_changes,
                why_one_object: str) -> None:
    """Check and set the settings both generators share; each error names ``owner.<field>``."""
    gen.image_size = check_size(image_size, f"{owner}.image_size")
    if check_n_objects(n_objects, f"{owner}.n_objects")[0] < 1:
        raise WorldConfigError(f"{owner}.n_objects: {why_one_object}; raise the lower bound to 1")
    gen.n_objects = n_objects
    gen.split = _check_choice(split, SPLITS, f"{owner}.split")
    gen.text_mode = _check_choice(text_mode, TEXT_MODES, f"{owner}.text_mode")
    gen.level_probs = _level_probs(level_weights, f"{owner}.level_weights")
    gen.max_changes = _check_max_changes(max_changes, f"{owner}.max_changes")


class LevelCaptions(SampleGenerator):
    """Rendered world scenes with a caption at a known quality level (UniFilter's image-text pairs).

    Args:
        image_size: rendered image side (32..224).
        n_objects: objects per scene, a count or an inclusive range (at least 1: levels 1-2 corrupt objects).
        split: ``"train"``, ``"val"`` or ``"test"``: the seed space scenes are drawn from (module docstring).
        text_mode: ``"dense"`` (objects + relations) or ``"objects"`` (count + object list only).
        level_weights: null = exactly balanced levels (``index % 4``); else 4 weights for levels 0..3.
        max_changes: most attribute slots a level-1 caption changes (>= 2).
    """

    def __init__(self, image_size: int = 64, n_objects: int | tuple[int, int] = (1, 4), split: str = "train",
                 text_mode: str = "dense", level_weights: list[float] | None = None,
                 max_changes: int = MAX_CHANGES) -> None:
        _set_common(self, "LevelCaptions", image_size, n_objects, split, text_mode, level_weights, max_changes,
                    "scenes need at least one object (levels 1 and 2 change objects)")

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One sample: ``{"image", "txt", "score": level, "json": {"scene", "level", "level_name", "kind",
        "changes", "caption_scene", "split", "text_mode", "index"}}``."""
        level = _draw_level(rng, index, self.level_probs)
        srng = split_rng(rng, self.split)
        scene = sample_scene(srng, self.n_objects)
        image = render_scene(scene, self.image_size, srng)
        txt, meta = caption_at_level(scene, level, srng, n_objects=self.n_objects, text_mode=self.text_mode,
                                     max_changes=self.max_changes)
        meta = {"scene": scene.to_dict(), **meta, "split": self.split, "text_mode": self.text_mode,
                "index": int(index)}
        return {"image": image, "txt": txt, "score": level, "json": meta}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        return (_image_problem(sample.get("image"), self.image_size) or _text_problem(sample.get("txt"))
                or _check_level(sample.get("score")))


class InterleavedDocs(SampleGenerator):
    """Interleaved image-text documents (image, text, image, text, ...) with one segment's text corrupted.

    Each document has ``n_segments`` segments, each a scene of its own (drawn from ``split``'s seed space) with
    its rendered image and its caption. A document of level ``L`` < 3 has exactly one segment, chosen
    uniformly, whose caption is at level ``L`` (:func:`.levels.caption_at_level`); every other segment is
    exact. A level-3 document has no corrupted segment. The document's score is ``L``.

    Sample format: ``{"images": [PIL, ...], "texts": [str, ...], "score": L, "json": {"scenes",
    "segment_levels", "corrupted_segment" (int or null), "corruption" (that segment's caption meta or null),
    "level", "split", "text_mode", "index"}}``; ``images[i]`` comes right before ``texts[i]`` in the document.
    """

    def __init__(self, image_size: int = 64, n_segments: int | tuple[int, int] = (2, 4),
                 n_objects: int | tuple[int, int] = (1, 3), split: str = "train", text_mode: str = "objects",
                 level_weights: list[float] | None = None, max_changes: int = MAX_CHANGES) -> None:
        self.image_size = check_size(image_size, "InterleavedDocs.image_size")
        lo, hi = (n_segments, n_segments) if isinstance(n_segments, int) else tuple(n_segments)
        if isinstance(lo, bool) or not isinstance(lo, int) or not isinstance(hi, int) or not 1 <= lo <= hi <= 16:
            raise WorldConfigError(f"InterleavedDocs.n_segments: {n_segments!r} is not a count or an ordered range "
                                   "[lo, hi] with 1 <= lo <= hi <= 16")
        self.n_segments = (lo, hi)
        _set_common(self, "InterleavedDocs", image_size, n_objects, split, text_mode, level_weights, max_changes,
                    "scenes need at least one object")

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        """One document (see the class docstring)."""
        level = _draw_level(rng, index, self.level_probs)
        srng = split_rng(rng, self.split)
        n = int(srng.integers(self.n_segments[0], self.n_segments[1] + 1))
        scenes = [sample_scene(srng, self.n_objects) for _ in range(n)]
        images = [render_scene(s, self.image_size, srng) for s in scenes]
        texts = [describe(s, self.text_mode) for s in scenes]
        corrupted, corruption = None, None
        if level < 3:
            corrupted = int(srng.integers(n))
            texts[corrupted], corruption = caption_at_level(scenes[corrupted], level, srng, n_objects=self.n_objects,
                                                            text_mode=self.text_mode, max_changes=self.max_changes)
        segment_levels = [level if i == corrupted else 3 for i in range(n)]
        meta = {"scenes": [s.to_dict() for s in scenes], "segment_levels": segment_levels,
                "corrupted_segment": corrupted, "corruption": corruption, "level": level, "split": self.split,
                "text_mode": self.text_mode, "index": int(index)}
        return {"images": images, "texts": texts, "score": level, "json": meta}

    def validate(self, sample: dict) -> str | None:
        """Reason to reject ``sample``, or None."""
        images, texts = sample.get("images"), sample.get("texts")
        if not isinstance(images, list) or not isinstance(texts, list) or not images or len(images) != len(texts):
            return "a document needs as many images as texts, at least one of each"
        for i, (image, text) in enumerate(zip(images, texts)):
            problem = _image_problem(image, self.image_size, f"images[{i}]") or _text_problem(text, f"texts[{i}]")
            if problem:
                return problem
        return _check_level(sample.get("score"))
