"""Folder-layout datasets for GIFT on real data (MTIL): reader, metadata and converter helpers.

Everything runs on tiny images written by the tests; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datagen.gift.folders import FolderTask, folder_eval_set, load_image, load_task_info, select_per_class
from datagen.gift.mtil_meta import (EXPECTED_NUM_CLASSES, HARD_TASKS, MTIL_META, MTIL_ORDER_I, MTIL_ORDER_II,
                                    get_meta, task_lr)
from datagen.stream import GeneratorStream, sample_rng, take

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red square", "blue square"]
COLOURS = [(200, 30, 30), (30, 30, 200)]


def _load_converter():
    """launch/ is a folder of scripts, not a package: load the converter from its file (once)."""
    if "convert_mtil" not in sys.modules:
        spec = importlib.util.spec_from_file_location("convert_mtil", ROOT / "launch" / "convert_mtil.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["convert_mtil"] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["convert_mtil"]


def make_fake_dataset(root: Path, name: str = "Fake", n_per_class: int = 3) -> Path:
    """2 classes x n images per split; class 0 red, class 1 blue (so labels can be checked from pixels)."""
    d = root / name
    for split in ("train", "test"):
        for label, colour in enumerate(COLOURS):
            class_dir = d / split / f"{label:03d}"
            class_dir.mkdir(parents=True)
            for k in range(n_per_class):
                shade = tuple(max(0, c - 10 * k) for c in colour)
                ext = "png" if k % 2 == 0 else "jpg"
                Image.new("RGB", (12 + k, 10), shade).save(class_dir / f"img{k}.{ext}")
    (d / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (d / "templates.txt").write_text("a photo of a {}.\na drawing of a {}.\n")
    (d / "meta.json").write_text(json.dumps({"source": "test"}))
    return d


def _colour_label(image: Image.Image) -> int:
    r, _, b = image.convert("RGB").getpixel((0, 0))
    return 0 if r > b else 1


# -- reader -------------------------------------------------------------------------------------------

def test_load_task_info(tmp_path):
    make_fake_dataset(tmp_path)
    classnames, templates = load_task_info(tmp_path, "Fake")
    assert classnames == CLASSES
    assert templates == ["a photo of a {}.", "a drawing of a {}."]


def test_missing_classnames_names_the_file(tmp_path):
    d = make_fake_dataset(tmp_path)
    (d / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_task_info(tmp_path, "Fake")
    assert str(d / "classnames.txt") in str(err.value) and "convert_mtil.py" in str(err.value)
    with pytest.raises(FileNotFoundError, match="convert_mtil.py"):
        FolderTask(tmp_path, "Missing")


def test_folder_task_deterministic_and_labels(tmp_path):
    make_fake_dataset(tmp_path)
    task = FolderTask(tmp_path, "Fake")
    assert len(task) == 6 and task.classnames == CLASSES and task.name == "Fake"
    assert task.items == sorted(task.items, key=lambda it: (it[1], it[0]))  # indexed in a fixed order
    a, b = task.generate(sample_rng(7, 3), 3), task.generate(sample_rng(7, 3), 3)
    assert a["json"] == b["json"] and a["label"] == b["label"]
    assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    seen = set()
    for i in range(40):
        s = task.generate(sample_rng(0, i), i)
        assert task.validate(s) is None and s["image"].mode == "RGB"
        assert s["json"]["path"].split("/")[1] == f"{s['label']:03d}"
        assert _colour_label(s["image"]) == s["label"]
        assert s["txt"] == f"a photo of a {CLASSES[s['label']]}."
        seen.add(s["json"]["path"])
    assert len(seen) == 6  # uniform draws reach every image
    assert task.validate({"image": a["image"], "label": 2}) is not None
    assert task.validate({"image": None, "label": 0}) is not None


def test_corrupt_image_raises_and_stream_drops_it(tmp_path):
    d = make_fake_dataset(tmp_path, n_per_class=1)
    bad = d / "train" / "001" / "img0.png"
    bad.write_bytes(b"not an image at all")
    task = FolderTask(tmp_path, "Fake")
    bad_index = next(i for i in range(100) if task.items[int(sample_rng(0, i).integers(2))][1] == 1)
    with pytest.raises(Exception):
        task.generate(sample_rng(0, bad_index), bad_index)
    with pytest.raises(Exception):
        load_image(bad)
    samples = take(GeneratorStream(task, seed=0), 5)
    assert len(samples) == 5 and all(s["label"] == 0 for s in samples)  # the stream went on
    assert samples[-1]["__dropped__"] > 0 and samples[-1]["__produced__"] == 5


def test_folder_eval_set(tmp_path):
    make_fake_dataset(tmp_path)

    def preprocess(im):
        return torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255

    es = folder_eval_set(tmp_path, "Fake", preprocess)
    assert es.images.shape == (6, 3, 8, 8) and es.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert es.classnames == CLASSES and es.templates[0] == "a photo of a {}."
    assert all((es.images[i, 0, 0, 0] > es.images[i, 2, 0, 0]) == (es.labels[i] == 0) for i in range(6))
    sub = folder_eval_set(tmp_path, "Fake", preprocess, max_per_class=2, seed=1)
    again = folder_eval_set(tmp_path, "Fake", preprocess, max_per_class=2, seed=1)
    assert sub.labels.tolist() == [0, 0, 1, 1] and torch.equal(sub.images, again.images)


def test_select_per_class_keeps_order():
    items = [(f"f{i}", i % 3) for i in range(30)]
    sub = select_per_class(items, 4, seed=0)
    assert [lab for _, lab in sub].count(1) == 4 and sub == [it for it in items if it in sub]
    assert select_per_class(items, None) == items


# -- metadata -----------------------------------------------------------------------------------------

def test_mtil_orders_and_eurosat_names():
    assert len(MTIL_ORDER_I) == 11 and sorted(MTIL_ORDER_I) == sorted(MTIL_ORDER_II)
    assert MTIL_ORDER_I != MTIL_ORDER_II
    assert MTIL_ORDER_I[0] == "Aircraft" and MTIL_ORDER_II[0] == "StanfordCars"
    assert HARD_TASKS == ("Aircraft", "MNIST") and task_lr("MNIST") == 5e-5 and task_lr("DTD") == 1e-5
    assert list(get_meta("EuroSAT").classnames) == [
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea"]


def test_bundled_metadata_is_consistent():
    assert set(MTIL_META) <= set(MTIL_ORDER_I)
    for name, meta in MTIL_META.items():
        assert len(meta.classnames) == EXPECTED_NUM_CLASSES[name], name
        assert len(set(meta.classnames)) == len(meta.classnames), name
        assert meta.templates and all("{}" in t for t in meta.templates), name
        assert all(c == c.strip() and "  " not in c for c in meta.classnames), name


def test_bundled_names_follow_torchvision_order():
    """Where torchvision bundles the class list (no data needed), the order must agree."""
    from torchvision.datasets import MNIST, Flowers102

    conv = _load_converter()
    for name, classes in (("Flowers", Flowers102.classes), ("MNIST", MNIST.classes)):
        meta = get_meta(name)
        assert conv.alignment_problem(meta.classnames, meta.source_classes, classes) is None, name
    shifted = list(get_meta("Flowers").classnames[1:]) + [get_meta("Flowers").classnames[0]]
    assert conv.alignment_problem(shifted, None, Flowers102.classes) is not None


# -- converter ----------------------------------------------------------------------------------------

def test_split_indices_deterministic_disjoint_and_like_random_split():
    conv = _load_converter()
    train, test = conv.split_indices(1003)
    assert (train, test) == conv.split_indices(1003)
    assert len(train) == 803 and len(test) == 200 and not set(train) & set(test)
    assert sorted(train + test) == list(range(1003))
    ref = torch.utils.data.random_split(range(1003), [0.8, 0.2], generator=torch.Generator().manual_seed(42))
    assert train == list(ref[0].indices) and test == list(ref[1].indices)
    assert conv.split_indices(1003, seed=0) != (train, test)
    for n in (5, 50, 27000):  # float edge cases of the fractions (27000 = EuroSAT's size)
        ref = torch.utils.data.random_split(range(n), [0.8, 0.2], generator=torch.Generator().manual_seed(42))
        assert conv.split_indices(n) == (list(ref[0].indices), list(ref[1].indices))


def test_normalise_classname():
    conv = _load_converter()
    assert conv.normalise_classname("apartment_building/outdoor", True) == "apartment building outdoor"
    assert conv.normalise_classname("Boeing 717", False) == "Boeing 717"


class _FakeFolderSet:
    """Stands in for torchvision's EuroSAT (an ImageFolder): ``samples`` and ``classes``."""

    def __init__(self, root: Path, classes, n_per_class: int) -> None:
        self.classes, self.samples = list(classes), []
        for label, c in enumerate(self.classes):
            for k in range(n_per_class):
                path = root / c / f"{c}_{k}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (label * 20, k * 50, 0)).save(path)
                self.samples.append((str(path), label))

    def __len__(self) -> int:
        return len(self.samples)


class _FakeArraySet:
    """Stands in for torchvision's MNIST: a uint8 tensor of images plus ``targets``."""

    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
               "8 - eight", "9 - nine"]

    def __init__(self, train: bool) -> None:
        n = 20 if train else 10
        self.targets = torch.arange(n) % 10
        self.data = (torch.arange(n * 28 * 28) % 251).to(torch.uint8).reshape(n, 28, 28)

    def __len__(self) -> int:
        return len(self.targets)


def test_convert_one_with_fake_sources(tmp_path, monkeypatch):
    conv = _load_converter()
    from datagen.gift.mtil_meta import EUROSAT_FOLDERS

    fake_euro = _FakeFolderSet(tmp_path / "src", EUROSAT_FOLDERS, n_per_class=5)

    def fake_open(spec, src, download, kwargs):
        return fake_euro if spec.tv_class == "EuroSAT" else _FakeArraySet(**kwargs)

    monkeypatch.setattr(conv, "_open", fake_open)
    out = tmp_path / "out"
    conv.convert_one("EuroSAT", tmp_path / "src", out)
    meta = json.loads((out / "EuroSAT" / "meta.json").read_text())
    assert meta["counts"] == {"train": 40, "test": 10} and meta["split_seed"] == 42
    assert "mtil_meta" in meta["classnames_from"]
    classnames, templates = load_task_info(out, "EuroSAT")
    assert classnames[0] == "annual crop land" and templates[0] == "a centered satellite photo of {}."
    task = FolderTask(out, "EuroSAT")
    assert len(task) == 40 and FolderTask(out, "EuroSAT", "test").items[0][0].endswith(".jpg")
    # every copied file sits under its source label
    for rel, label in task.items:
        src_index = int(Path(rel).stem)
        assert fake_euro.samples[src_index][1] == label
    # idempotent: a finished dataset is skipped
    stamp = (out / "EuroSAT" / "meta.json").stat().st_mtime_ns
    conv.convert_one("EuroSAT", tmp_path / "src", out)
    assert (out / "EuroSAT" / "meta.json").stat().st_mtime_ns == stamp

    conv.convert_one("MNIST", tmp_path / "src", out)
    mnist = FolderTask(out, "MNIST")
    assert len(mnist) == 20 and mnist.items[0][0].endswith(".png") and mnist.classnames[3] == "3"
    assert mnist.generate(sample_rng(0, 0), 0)["image"].size == (28, 28)
