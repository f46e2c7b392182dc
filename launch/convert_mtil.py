"""Convert the 11 MTIL datasets from torchvision into the folder layout of ``datagen.gift.folders``.

Run on a machine that has (or may download) the torchvision datasets::

    python launch/convert_mtil.py --src /data/torchvision --out /data/mtil [--datasets Aircraft MNIST] [--download]

Split rules (``docs/specs/gift.md``): Caltech101, EuroSAT and SUN397 have no official split and get
an 80/20 random split with seed 42 (same indices as ``torch.utils.data.random_split(ds, [0.8, 0.2],
generator=torch.Generator().manual_seed(42))``); Aircraft uses FGVCAircraft ``train`` / ``test``;
OxfordPet ``trainval`` / ``test``; the others their standard train / test. All labels are 0-indexed as
torchvision gives them (torchvision's Flowers102 already subtracts 1: do not shift again).

Image files are copied byte for byte (original format); array datasets (MNIST, CIFAR100) become PNG.
A dataset is skipped when its ``meta.json`` exists (it is written last), unless ``--overwrite``.
See docs/mtil.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from datagen.gift.folders import CLASSNAMES_FILE, IMAGE_EXTS, META_FILE, TEMPLATES_FILE  # noqa: E402
from datagen.gift.mtil_meta import MTIL_ORDER_I, get_meta  # noqa: E402

log = logging.getLogger("convert_mtil")

SPLIT_SEED = 42
TRAIN_FRACTION = 0.8
# Used when a dataset has no verified metadata (see mtil_meta): CLIP's default template set.
FALLBACK_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")


@dataclass(frozen=True)
class Spec:
    """How one MTIL dataset is read from torchvision."""

    tv_class: str  # name in torchvision.datasets
    splits: dict[str, dict] | None  # output split -> constructor kwargs; None = one set, 80/20 random split
    lowercase: bool  # lower-case torchvision's names in the fallback (not for model names like "A320")


SPECS: dict[str, Spec] = {
    "Aircraft": Spec("FGVCAircraft", {"train": {"split": "train"}, "test": {"split": "test"}}, False),
    "Caltech101": Spec("Caltech101", None, True),
    "CIFAR100": Spec("CIFAR100", {"train": {"train": True}, "test": {"train": False}}, True),
    "DTD": Spec("DTD", {"train": {"split": "train"}, "test": {"split": "test"}}, True),
    "EuroSAT": Spec("EuroSAT", None, True),
    "Flowers": Spec("Flowers102", {"train": {"split": "train"}, "test": {"split": "test"}}, True),
    "Food": Spec("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}, True),
    "MNIST": Spec("MNIST", {"train": {"train": True}, "test": {"train": False}}, True),
    "OxfordPet": Spec("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}, False),
    "StanfordCars": Spec("StanfordCars", {"train": {"split": "train"}, "test": {"split": "test"}}, False),
    "SUN397": Spec("SUN397", None, True),
}


def split_indices(n: int, train_fraction: float = TRAIN_FRACTION, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Disjoint random ``(train, test)`` indices of ``range(n)``, as ``random_split`` with fractions makes them.

    Reproducing ``random_split`` exactly (floor of each fraction, remainder handed out round-robin,
    one ``randperm`` from a generator seeded with ``seed``) keeps these splits identical to the ones
    of code that calls ``random_split(ds, [0.8, 0.2], generator=torch.Generator().manual_seed(42))``.
    """
    # round(): 1 - 0.8 is 0.19999999999999996 in floats, which floors 50 * it to 9 where
    # random_split([0.8, 0.2]) gets 10; rounding recovers the literal 0.2 the reference code passes.
    fractions = [train_fraction, round(1.0 - train_fraction, 12)]
    lengths = [int(math.floor(n * f)) for f in fractions]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[: lengths[0]], perm[lengths[0]: lengths[0] + lengths[1]]


def normalise_classname(name: str, lowercase: bool) -> str:
    """torchvision's raw class name as prompt text: ``_`` and ``/`` -> spaces, optionally lower-cased."""
    text = re.sub(r"\s+", " ", name.replace("_", " ").replace("/", " ")).strip()
    return text.lower() if lowercase else text


def _loose(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def alignment_problem(classnames, source_classes, tv_classes) -> str | None:
    """Why bundled class names may not follow torchvision's label order, or None when they do.

    With exact expected source names (EuroSAT, MNIST) they must match. Otherwise at least half of the
    names must match torchvision's up to case and punctuation: CLIP re-worded a few (Caltech101,
    Flowers), but a shifted or re-ordered list matches almost nowhere.
    """
    tv_classes = list(tv_classes)
    if len(classnames) != len(tv_classes):
        return f"{len(classnames)} bundled names vs {len(tv_classes)} torchvision classes"
    if source_classes is not None:
        if list(source_classes) != tv_classes:
            return f"torchvision classes {tv_classes[:4]}... differ from the expected {list(source_classes)[:4]}..."
        return None
    same = sum(_loose(a) == _loose(b) for a, b in zip(classnames, tv_classes))
    if same < 0.5 * len(tv_classes):
        return f"only {same}/{len(tv_classes)} bundled names match torchvision's at the same index"
    return None


def _tv_classes(ds) -> list[str]:
    classes = getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if not classes:
        raise RuntimeError(f"{type(ds).__name__} exposes neither `classes` nor `categories`")
    return list(classes)


def source_items(ds) -> list[tuple[Path | None, int]]:
    """``(image file or None, label)`` of every sample, read from the dataset's index, not its images.

    Reading torchvision's own file lists lets the converter copy files instead of decoding and
    re-encoding them (lossless, and much faster); ``None`` means "take the image from ``ds[i]``".
    """
    for attr in ("samples", "_samples"):  # ImageFolder (EuroSAT), StanfordCars
        if hasattr(ds, attr):
            return [(Path(p), int(t)) for p, t in getattr(ds, attr)]
    for attr in ("_image_files", "_images"):  # FGVCAircraft, DTD, Flowers102, Food101, SUN397, OxfordIIITPet
        if hasattr(ds, attr) and hasattr(ds, "_labels"):
            return [(Path(p), int(t)) for p, t in zip(getattr(ds, attr), ds._labels)]
    if hasattr(ds, "categories") and hasattr(ds, "y") and hasattr(ds, "index"):  # Caltech101
        base = Path(ds.root) / "101_ObjectCategories"
        return [(base / ds.categories[y] / f"image_{k:04d}.jpg", int(y)) for k, y in zip(ds.index, ds.y)]
    if hasattr(ds, "targets"):  # CIFAR100, MNIST: images live in arrays
        return [(None, int(t)) for t in ds.targets]
    return [(None, int(ds[i][1])) for i in range(len(ds))]


def _write_image(ds, i: int, src: Path | None, dst_stem: Path) -> None:
    if src is not None and src.suffix.lower() in IMAGE_EXTS:
        shutil.copyfile(src, dst_stem.with_suffix(src.suffix.lower()))
        return
    from PIL import Image

    if src is not None:  # an unusual format: re-encode losslessly
        with Image.open(src) as im:
            im.save(dst_stem.with_suffix(".png"))
        return
    if hasattr(ds, "data"):
        arr = ds.data[i]
        arr = arr.numpy() if isinstance(arr, torch.Tensor) else arr
        Image.fromarray(arr).save(dst_stem.with_suffix(".png"))
    else:
        ds[i][0].save(dst_stem.with_suffix(".png"))


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # a bar is a convenience only
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img")


def _open(spec: Spec, src: Path, download: bool, kwargs: dict):
    import torchvision.datasets as tvd

    return getattr(tvd, spec.tv_class)(root=str(src), download=download, **kwargs)


def convert_one(name: str, src: Path, out: Path, download: bool = False, overwrite: bool = False) -> Path:
    """Convert one dataset into ``out/name``; returns that folder. Skips a finished one unless ``overwrite``."""
    spec = SPECS[name]
    final = out / name
    if (final / META_FILE).is_file() and not overwrite:
        log.info("%s: %s exists, skipping (use --overwrite to redo)", name, final / META_FILE)
        return final
    # Build in a side folder and rename at the end, so an interrupted run never looks finished.
    work = out / f".{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _convert_into(name, spec, src, work, download)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # no half-written leftovers from a failed dataset
        raise
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return final


def _convert_into(name: str, spec: Spec, src: Path, work: Path, download: bool) -> None:
    """Write dataset ``name`` (images, classnames, templates, meta.json) into the folder ``work``."""
    if spec.splits is None:
        ds = _open(spec, src, download, {})
        train_idx, test_idx = split_indices(len(ds))
        parts = {"train": (ds, train_idx), "test": (ds, test_idx)}
        rule = f"random {TRAIN_FRACTION:.0%}/{1 - TRAIN_FRACTION:.0%} split of the whole set, seed {SPLIT_SEED}"
    else:
        parts = {}
        for split, kwargs in spec.splits.items():
            ds = _open(spec, src, download, kwargs)
            parts[split] = (ds, list(range(len(ds))))
        rule = "; ".join(f"{split} = {spec.tv_class}({kw})" for split, kw in spec.splits.items())

    tv_classes = _tv_classes(parts["train"][0])
    meta = get_meta(name)
    problem = alignment_problem(meta.classnames, meta.source_classes, tv_classes) if meta else "no bundled list"
    if problem is None:
        classnames, names_from = list(meta.classnames), "datagen/gift/mtil_meta.py (CLIP data/prompts.md)"
    else:
        if meta is not None:
            log.warning("%s: bundled class names not used (%s); writing torchvision's", name, problem)
        classnames = [normalise_classname(c, spec.lowercase) for c in tv_classes]
        names_from = f"torchvision {spec.tv_class}.classes, normalised ({problem})"
    templates = list(meta.templates) if meta else list(FALLBACK_TEMPLATES)

    counts: dict[str, int] = {}
    per_class: dict[str, list[int]] = {}
    for split, (ds, indices) in parts.items():
        items = source_items(ds)
        hist = [0] * len(classnames)
        for i in _progress(indices, len(indices), f"{name}/{split}"):
            path, label = items[i]
            if not 0 <= label < len(classnames):
                raise ValueError(f"{name}: label {label} of sample {i} outside 0..{len(classnames) - 1}")
            class_dir = work / split / f"{label:03d}"
            class_dir.mkdir(parents=True, exist_ok=True)
            _write_image(ds, i, path, class_dir / f"{i:06d}")
            hist[label] += 1
        counts[split], per_class[split] = len(indices), hist

    (work / CLASSNAMES_FILE).write_text("\n".join(classnames) + "\n", encoding="utf-8")
    (work / TEMPLATES_FILE).write_text("\n".join(templates) + "\n", encoding="utf-8")
    import torchvision

    info = {"dataset": name, "source": f"torchvision.datasets.{spec.tv_class}",
            "torchvision_version": torchvision.__version__, "split_rule": rule,
            "split_seed": SPLIT_SEED if spec.splits is None else None, "num_classes": len(classnames),
            "counts": counts, "per_class_counts": per_class, "classnames_from": names_from,
            "labels": "0-indexed, torchvision's label order; folder number = label"}
    (work / META_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %s", name, counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="torchvision dataset root")
    parser.add_argument("--out", type=Path, required=True, help="where the converted folders go")
    parser.add_argument("--datasets", nargs="+", default=MTIL_ORDER_I, choices=sorted(SPECS),
                        metavar="NAME", help=f"subset of: {' '.join(MTIL_ORDER_I)} (default: all)")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    parser.add_argument("--overwrite", action="store_true", help="redo datasets that are already converted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.datasets:
        try:
            convert_one(name, args.src, args.out, download=args.download, overwrite=args.overwrite)
        except Exception as exc:  # one missing dataset should not stop the others
            log.error("%s: conversion failed: %s: %s", name, type(exc).__name__, exc)
            failed.append(name)
    if failed:
        log.error("failed: %s", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
