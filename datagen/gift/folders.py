"""Real classification datasets (the MTIL benchmark) read from a plain folder layout.

``launch/convert_mtil.py`` writes each dataset as::

    <root>/<Dataset>/train/<class_index:03d>/<file>.{jpg,png}
    <root>/<Dataset>/test/<class_index:03d>/<file>.{jpg,png}
    <root>/<Dataset>/classnames.txt   one class name per line, in label order
    <root>/<Dataset>/templates.txt    one prompt template per line with a "{}" placeholder; first = canonical
    <root>/<Dataset>/meta.json        source, split rule, counts

A folder of files (instead of torchvision objects) keeps training machines free of dataset
downloads and makes the label order explicit on disk: the label *is* the folder number.

* :func:`load_task_info` -- class names and templates of one dataset;
* :class:`FolderTask` -- a :class:`~datagen.stream.SampleGenerator` of training images for the online
  stream (``datagen.gift.task_stream.ContinualStream`` pairs it with the replay set);
* :func:`folder_eval_set` -- the preprocessed test split as a ``datagen.evalset.EvalSet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datagen.generator import SampleGenerator

SPLITS = ("train", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "templates.txt"
META_FILE = "meta.json"


def _convert_hint(root: str | Path, name: str) -> str:
    return f"run `python launch/convert_mtil.py --src <torchvision root> --out {root} --datasets {name}` first"


def dataset_dir(root: str | Path, name: str) -> Path:
    """``<root>/<name>``; raises with a conversion hint when it does not exist."""
    path = Path(root) / name
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist; {_convert_hint(root, name)}")
    return path


def _read_lines(path: Path, root: str | Path, name: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (dataset {name!r}); {_convert_hint(root, name)}")
    # Surrounding spaces / CRs are never part of a name; an empty line in the middle would shift labels.
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty (dataset {name!r}); {_convert_hint(root, name)}")
    if any(not line for line in lines):
        raise ValueError(f"{path} has an empty line in the middle: labels after it would be shifted")
    return lines


def load_task_info(root: str | Path, name: str) -> tuple[list[str], list[str]]:
    """``(classnames, templates)`` of dataset ``name`` under ``root`` (label order; first template canonical)."""
    folder = dataset_dir(root, name)
    classnames = _read_lines(folder / CLASSNAMES_FILE, root, name)
    templates = _read_lines(folder / TEMPLATES_FILE, root, name)
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"{folder / TEMPLATES_FILE}: templates without a '{{}}' placeholder: {bad[:3]}")
    return classnames, templates


def index_split(root: str | Path, name: str, split: str, num_classes: int) -> list[tuple[str, int]]:
    """Sorted ``(relative path, label)`` pairs of one split; the label is the class folder's number.

    Sorting (folders numerically, files by name) makes the index identical on every machine, which
    is what lets ``FolderTask.generate`` be a pure function of ``(rng, index)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = dataset_dir(root, name)
    split_dir = folder / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is missing (dataset {name!r}); {_convert_hint(root, name)}")
    items: list[tuple[str, int]] = []
    class_dirs = [d for d in split_dir.iterdir() if d.is_dir()]
    for d in sorted(class_dirs, key=lambda d: (len(d.name), d.name)):
        if not d.name.isdigit():
            raise ValueError(f"{d}: class folders must be numbered (<class_index:03d>), found {d.name!r}")
        label = int(d.name)
        if label >= num_classes:
            raise ValueError(f"{d}: label {label} but {folder / CLASSNAMES_FILE} lists {num_classes} classes")
        files = sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        items += [(f"{split}/{d.name}/{f}", label) for f in files]
    if not items:
        raise FileNotFoundError(f"{split_dir} holds no images (dataset {name!r}); {_convert_hint(root, name)}")
    return items


def load_image(path: str | Path) -> Image.Image:
    """Decode an image fully and return it as RGB; raises on unreadable or truncated files.

    ``load()`` forces decoding here: PIL opens lazily, and a corrupt file would otherwise only fail
    later inside the transform, outside the stream's drop-and-count handling.
    """
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


class FolderTask(SampleGenerator):
    """Uniformly random labelled images of one split of a converted dataset.

    Each sample is ``{"image": PIL RGB, "label": int, "txt": first template with the class name,
    "json": {"path": path relative to the dataset folder, "dataset": name}}``. Images are drawn with
    replacement with the sample's rng (the online stream supplies one per index), so the stream is
    endless and deterministic under its seed. An unreadable file raises in :meth:`generate`; the
    stream drops the sample and counts it.

    Args:
        root: folder holding the converted datasets.
        name: dataset folder name (e.g. ``"Aircraft"``).
        split: ``"train"`` (default) or ``"test"``.
    """

    def __init__(self, root: str | Path, name: str, split: str = "train") -> None:
        self.root = Path(root)
        self.name = name
        self.split = split
        self.classnames, self.templates = load_task_info(root, name)
        self.dir = dataset_dir(root, name)
        self.items = index_split(root, name, split, len(self.classnames))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompt(self, label: int) -> str:
        """The canonical (first-template) prompt of a class: what the task loss uses."""
        return self.templates[0].format(self.classnames[label])

    def generate(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        rel, label = self.items[int(rng.integers(len(self.items)))]
        image = load_image(self.dir / rel)
        return {"image": image, "label": label, "txt": self.prompt(label),
                "json": {"path": rel, "dataset": self.name}}

    def validate(self, sample: dict[str, Any]) -> str | None:
        label = sample.get("label")
        if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
            return f"label {label!r} outside 0..{self.num_classes - 1}"
        image = sample.get("image")
        if not isinstance(image, Image.Image):
            return f"image is {type(image).__name__}, not a PIL image"
        if image.mode != "RGB" or min(image.size) < 1:
            return f"bad image (mode {image.mode}, size {image.size})"
        return None


def select_per_class(items: list[tuple[str, int]], max_per_class: int | None,
                     seed: int = 0) -> list[tuple[str, int]]:
    """At most ``max_per_class`` items of every class, chosen by ``(seed, label)``; input order kept.

    Seeding per class keeps a class's subset unchanged when other classes gain or lose files.
    """
    if max_per_class is None:
        return list(items)
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(i)
    keep: set[int] = set()
    for label, idx in by_class.items():
        if len(idx) > max_per_class:
            chosen = np.random.default_rng([int(seed), int(label)]).choice(len(idx), max_per_class, replace=False)
            idx = [idx[j] for j in chosen]
        keep.update(idx)
    return [item for i, item in enumerate(items) if i in keep]


def folder_eval_set(root: str | Path, name: str, preprocess, max_per_class: int | None = None,
                    seed: int = 0):
    """The test split of dataset ``name`` as a preprocessed ``datagen.evalset.EvalSet``.

    Unlike training, evaluation must not silently skip data: an unreadable test image raises.

    Args:
        preprocess: PIL image -> (3, H, W) tensor (the CLIP evaluation transform).
        max_per_class: optional deterministic per-class cap (quick evaluations); None = whole split.
        seed: seed of that subset.
    """
    import torch

    from datagen.evalset import EvalSet

    classnames, templates = load_task_info(root, name)
    folder = dataset_dir(root, name)
    items = select_per_class(index_split(root, name, "test", len(classnames)), max_per_class, seed)
    images = []
    for rel, _ in items:
        try:
            images.append(preprocess(load_image(folder / rel)))
        except Exception as exc:
            raise RuntimeError(f"cannot load test image {folder / rel}: {exc}") from exc
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return EvalSet(name, classnames, templates, torch.stack(images), labels)
