"""GIFT prompt pools: the class-name prompts whose synthetic images are replayed at task ``t``.

Spec (``docs/specs/gift.md``): ``P_t = {"a photo of a {c}." for the 1000 ImageNet class names}
∪ {first-template prompts of all classes of the tasks before t}``; the current task's own classes are
not in its pool. N prompts are drawn uniformly *with replacement*; a synthetic pair's label is the
index of its prompt in the pool (its *prompt id*).

The pool is a set: duplicates are dropped keeping the first occurrence, so prompt id <-> prompt text
is a bijection ("two images with the same prompt share a label" then holds for ids and texts alike).

Toy runs replace ImageNet by the world's "pre-training" vocabulary (:func:`world_base_prompts`):
single-object prompts in the wording of the world captions ("a photo of a red cube.", "a photo of a
small metal sphere."). Every world prompt carries a JSON-able ``spec`` that says what to render, so
the toy generator (:class:`datagen.gift.backends.WorldT2I`) can draw exactly what the prompt says.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datagen.world import TASK_FAMILIES, TaskFamily, object_phrase
from datagen.world.scene import ATTRIBUTE_VALUES, Scene
from datagen.world.tasks import scene_classname

IMAGENET_TEMPLATE = "a photo of a {}."
WORLD_TEMPLATE = "a photo of {}."  # filled with object_phrase(..., det="a"): the article follows the phrase
_IMAGENET_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classnames.txt")
_SAMPLE_SALT = 0x61F7  # keeps pool draws out of the seed space of the per-item image seeds


@functools.lru_cache(maxsize=1)
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 ImageNet class names in label order (CLIP wording; source and edits in the data file)."""
    with open(_IMAGENET_FILE, encoding="utf-8") as f:
        names = tuple(line.rstrip("\n") for line in f if line.strip() and not line.startswith("#"))
    if len(names) != 1000 or len(set(names)) != 1000:
        raise RuntimeError(f"{_IMAGENET_FILE} must hold 1000 distinct class names, found {len(names)} "
                           f"({len(set(names))} distinct)")
    return names


def _object_attr_sets() -> list[tuple[str, ...]]:
    """Attribute subsets named by world base prompts: the shape plus at least one other attribute.

    Shape-only ("a photo of a cube.") and shape-less ("a photo of a red object.") phrases are left out
    on purpose: they are exactly the first-template prompts of the shape/color/material/size task
    families, and the spec keeps the current task's class prompts out of its pool.
    """
    others = ("size", "color", "material")
    subsets = [c for k in (1, 2, 3) for c in itertools.combinations(others, k)]
    return [(*s, "shape") for s in subsets]


@functools.lru_cache(maxsize=1)
def _world_base() -> tuple[tuple[str, dict], ...]:
    out = []
    for attrs in _object_attr_sets():
        for values in itertools.product(*(ATTRIBUTE_VALUES[a] for a in attrs)):
            obj = dict(zip(attrs, values))
            prompt = WORLD_TEMPLATE.format(object_phrase(obj, attrs, det="a"))
            out.append((prompt, {"kind": "object", "attrs": obj}))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _world_pairs() -> tuple[tuple[str, dict], ...]:
    """Two-object prompts in the pre-training captions' pair wording: "a photo of a red cube and a blue
    sphere." -- every unordered pair of distinct (colour, shape) objects (276)."""
    objs = [{"color": c, "shape": s} for c in ATTRIBUTE_VALUES["color"] for s in ATTRIBUTE_VALUES["shape"]]
    out = []
    for a, b in itertools.combinations(objs, 2):
        phrases = [object_phrase(o, ("color", "shape"), det="a") for o in (a, b)]
        out.append((WORLD_TEMPLATE.format(" and ".join(phrases)), {"kind": "objects", "objects": [a, b]}))
    return tuple(out)


def world_base_prompts() -> list[str]:
    """The toy "pre-training" prompts (240): one object, its shape and 1-3 of size/color/material named.

    Example: "a photo of a red cube.", "a photo of a small metal sphere.". Order is fixed (stable ids).
    """
    return [p for p, _ in _world_base()]


def world_prompt_spec(prompt: str) -> dict | None:
    """What a world prompt describes, or None for a prompt outside the world's wording.

    ``{"kind": "object", "attrs": {"color": "red", "shape": "cube"}}`` for base prompts (attributes not
    named are free), ``{"kind": "family", "family": "digits", "label": 3}`` for any template of a
    registered task family formatted with one of its class names.
    """
    return _world_specs().get(prompt)


@functools.lru_cache(maxsize=1)
def _world_specs() -> dict[str, dict]:
    specs: dict[str, dict] = {}
    # Family prompts first: where a prompt is both (none today), the task family's meaning wins.
    for name, fam in TASK_FAMILIES.items():
        for label in range(fam.n_classes):
            for p in fam.prompts(label):
                specs.setdefault(p, {"kind": "family", "family": name, "label": label})
    for p, spec in _world_base() + _world_pairs():
        specs.setdefault(p, spec)
    return specs


def world_prompt_describes(spec: dict, image: dict) -> bool:
    """Whether a world prompt (its :func:`world_prompt_spec`) truthfully describes a rendered image.

    ``image`` is what :meth:`datagen.gift.backends.WorldT2I.render` says it drew: ``{"scene": ...}``
    and/or ``{"family": ..., "label": ...}``. An object prompt describes a one-object scene whose
    object has every named attribute; a task-family prompt describes a scene that the family would
    label with that class (:func:`datagen.world.tasks.scene_classname`), or a digit of that label.
    Used for the toy's truth-aware ITA targets (``ita_targets: describes``).
    """
    return _describes(spec, image, Scene.from_dict(image["scene"]) if "scene" in image else None)


def _describes(spec: dict, image: dict, scene: Scene | None) -> bool:
    kind = spec.get("kind")
    if kind == "object":
        return (scene is not None and len(scene.objects) == 1
                and all(getattr(scene.objects[0], a) == v for a, v in spec["attrs"].items()))
    if kind == "objects":  # exactly these objects, in either order
        if scene is None or len(scene.objects) != len(spec["objects"]):
            return False
        return any(all(all(getattr(o, a) == v for a, v in want.items()) for o, want in zip(perm, spec["objects"]))
                   for perm in itertools.permutations(scene.objects))
    if kind == "family":
        fam = TASK_FAMILIES[spec["family"]]
        if spec["family"] == "digits":
            return image.get("family") == "digits" and image.get("label") == spec["label"]
        return scene is not None and scene_classname(fam, scene) == fam.classnames[spec["label"]]
    return False


@dataclass(frozen=True)
class PromptPool:
    """An ordered, duplicate-free list of prompts; a prompt's id is its index.

    ``specs[i]`` is a JSON-able description of prompt ``i`` (``{"kind": "imagenet", "class": ...}``,
    ``{"kind": "object", ...}``, ``{"kind": "family", ...}`` or ``{"kind": "text"}``); ``sources[i]``
    names where it came from (``"base"`` or ``"task<k>"``, k = 0-based index in ``previous_tasks``).
    """

    prompts: tuple[str, ...]
    specs: tuple[dict, ...] = field(default=())
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError("PromptPool prompts must be distinct (use build_pool, which de-duplicates)")
        if not self.prompts:
            raise ValueError("PromptPool is empty")
        if not self.specs:
            object.__setattr__(self, "specs", tuple({"kind": "text"} for _ in self.prompts))
        if not self.sources:
            object.__setattr__(self, "sources", tuple("base" for _ in self.prompts))
        if not len(self.specs) == len(self.sources) == len(self.prompts):
            raise ValueError("PromptPool: prompts, specs and sources must have the same length")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, prompt_id: int) -> str:
        return self.prompts[prompt_id]

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._index

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.prompts)}

    def prompt_id(self, prompt: str) -> int:
        """The id of ``prompt``; KeyError if it is not in the pool."""
        return self._index[prompt]

    def sample(self, n: int, seed: int) -> list[tuple[int, str]]:
        """``n`` draws ``(prompt_id, prompt)``, uniform *with replacement*, a pure function of (pool, n, seed).

        A prefix property holds: the first k draws of ``sample(n, s)`` equal ``sample(k, s)``.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SAMPLE_SALT]))
        # One integer per draw, sequentially: numpy's bounded integers keep the prefix property.
        ids = rng.integers(0, len(self.prompts), size=n)
        return [(int(i), self.prompts[int(i)]) for i in ids]

    def content_hash(self) -> str:
        """sha256 (hex) of the prompts and their specs in id order: changes with any prompt, order or spec."""
        blob = json.dumps({"prompts": list(self.prompts), "specs": list(self.specs)}, sort_keys=True,
                          ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def describing(self, image: dict, exclude: int | None = None) -> list[int]:
        """Ids of the world prompts of this pool that truthfully describe ``image`` (a
        :meth:`WorldT2I.render` description), ``exclude`` (the image's own prompt id) left out."""
        scene = Scene.from_dict(image["scene"]) if "scene" in image else None  # parsed once for every prompt
        return [j for j, spec in enumerate(self.specs) if j != exclude and _describes(spec, image, scene)]

    def counts(self) -> dict[str, int]:
        """Number of prompts per source (``base``, ``task0``, ...), for logs."""
        out: dict[str, int] = {}
        for s in self.sources:
            out[s] = out.get(s, 0) + 1
        return out


TaskSpec = TaskFamily | tuple[Sequence[str], str]


def _task_prompts(task: TaskSpec) -> list[str]:
    """First-template prompts of every class of ``task`` (a TaskFamily or ``(classnames, first_template)``)."""
    if isinstance(task, TaskFamily):
        classnames, template = task.classnames, task.templates[0]
    else:
        classnames, template = task
        if not isinstance(template, str):
            raise TypeError(f"previous task spec must be (classnames, first_template: str), got {task!r}")
    return [template.format(c) for c in classnames]


def _spec_for(prompt: str, default: dict) -> dict:
    spec = world_prompt_spec(prompt)
    return spec if spec is not None else default


def build_pool(base: str | Sequence[str], previous_tasks: Sequence[TaskSpec] = ()) -> PromptPool:
    """The pool P_t: base prompts ∪ first-template prompts of all classes of ``previous_tasks``.

    ``base``: ``"imagenet"`` ("a photo of a {c}." for the 1000 ImageNet names), ``"world"``
    (:func:`world_base_prompts`), ``"world_full"`` (the 96 of those that name all four attributes:
    mutually exclusive, as ImageNet's classes are), ``"world_scenes"`` (``world`` plus 276 two-object
    prompts, "a photo of a red cube and a blue sphere.") or an explicit list of prompts. ``previous_tasks``: the tasks *before*
    t, each ``(classnames, first_template)`` or a :class:`TaskFamily`; the caller leaves task t out,
    which is what keeps the current task's classes out of its pool. Order: base, then tasks in order;
    a prompt already in the pool keeps its first id.
    """
    entries: list[tuple[str, dict, str]] = []
    if isinstance(base, str):
        if base == "imagenet":
            entries += [(IMAGENET_TEMPLATE.format(c), {"kind": "imagenet", "class": c}, "base")
                        for c in imagenet_classnames()]
        elif base == "world":
            entries += [(p, spec, "base") for p, spec in _world_base()]
        elif base == "world_full":  # every attribute named: no prompt describes another prompt's image
            entries += [(p, spec, "base") for p, spec in _world_base() if len(spec["attrs"]) == len(ATTRIBUTE_VALUES)]
        elif base == "world_scenes":  # the single-object prompts plus two-object scenes
            entries += [(p, spec, "base") for p, spec in _world_base() + _world_pairs()]
        else:
            raise ValueError(f"base must be 'imagenet', 'world', 'world_full', 'world_scenes' or a list of prompts, "
                             f"got {base!r}")
    else:
        entries += [(str(p), _spec_for(str(p), {"kind": "text"}), "base") for p in base]
    for k, task in enumerate(previous_tasks):
        entries += [(p, _spec_for(p, {"kind": "text"}), f"task{k}") for p in _task_prompts(task)]
    seen: set[str] = set()
    prompts, specs, sources = [], [], []
    for p, spec, src in entries:
        if p in seen:
            continue
        seen.add(p)
        prompts.append(p)
        specs.append(spec)
        sources.append(src)
    return PromptPool(tuple(prompts), tuple(specs), tuple(sources))


def pool_summary(pool: PromptPool) -> dict[str, Any]:
    """A small JSON-able description of a pool for manifests and logs."""
    return {"size": len(pool), "hash": pool.content_hash(), "sources": pool.counts()}
