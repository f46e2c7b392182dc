"""UniFilter's training data (datagen/unifilter): exact quality labels, balance, determinism, held-out splits,
interleaved documents, dropped-and-counted failures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from datagen.generator import sample_rng
from datagen.stream import GeneratorStream, take
from datagen.unifilter import (InterleavedDocs, LevelCaptions, caption_at_level, describe, one_attribute_error,
                               several_errors, slot_differences)
from datagen.world import Scene, WorldConfigError, sample_scene

N = 120  # samples per check: 30 of each level


def listing(text: str) -> list[list[str]]:
    """The object phrases of an "objects" caption as word lists without the article:
    "there are two objects: a large red metal cube and a small ..." -> [["large", "red", "metal", "cube"], ...]."""
    m = re.fullmatch(r"there (?:is|are) \w+ objects?: (.*)\.", text)
    assert m, text
    phrases = re.split(r", | and ", m.group(1))
    out = []
    for p in phrases:
        words = p.split()
        assert words[0] in ("a", "an") and len(words) == 5, p  # article + size colour material shape
        out.append(words[1:])
    return out


def word_differences(a: str, b: str) -> int | None:
    la, lb = listing(a), listing(b)
    if len(la) != len(lb):
        return None
    return sum(x != y for pa, pb in zip(la, lb) for x, y in zip(pa, pb))


@pytest.fixture(scope="module")
def samples():
    gen = LevelCaptions(image_size=32, n_objects=(1, 4), text_mode="objects")
    return [gen.generate(sample_rng(7, i), i) for i in range(N)]


def test_levels_are_exactly_balanced_by_default(samples):
    counts = np.bincount([s["score"] for s in samples], minlength=4)
    assert counts.tolist() == [N // 4] * 4
    assert [s["score"] for s in samples[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_level3_is_the_exact_caption(samples):
    for s in (s for s in samples if s["score"] == 3):
        scene = Scene.from_dict(s["json"]["scene"])
        assert s["txt"] == describe(scene, "objects")
        assert s["json"]["kind"] == "none" and s["json"]["caption_scene"] == s["json"]["scene"]


def test_level2_differs_in_exactly_one_attribute_of_one_object(samples):
    for s in (s for s in samples if s["score"] == 2):
        scene, told = Scene.from_dict(s["json"]["scene"]), Scene.from_dict(s["json"]["caption_scene"])
        truth = describe(scene, "objects")
        assert word_differences(truth, s["txt"]) == 1, (truth, s["txt"])
        assert slot_differences(scene, told) == 1
        (change,) = s["json"]["changes"]
        assert change["from"] != change["to"] and change["to"] in re.findall(r"\w+", s["txt"])
        assert s["txt"] == describe(told, "objects")


def test_level1_has_several_wrong_attributes_or_a_wrong_count(samples):
    kinds = set()
    for s in (s for s in samples if s["score"] == 1):
        scene = Scene.from_dict(s["json"]["scene"])
        truth, kind = describe(scene, "objects"), s["json"]["kind"]
        kinds.add(kind)
        diff = word_differences(truth, s["txt"])
        if kind == "attributes":
            assert diff is not None and diff >= 2 and len(s["json"]["changes"]) == diff
        else:
            assert kind in ("add", "remove") and diff is None  # the object count is wrong
            assert len(listing(s["txt"])) == len(scene) + (1 if kind == "add" else -1)
    assert kinds >= {"attributes", "add"}


def test_level0_is_an_unrelated_scene(samples):
    for s in (s for s in samples if s["score"] == 0):
        scene, other = Scene.from_dict(s["json"]["scene"]), Scene.from_dict(s["json"]["caption_scene"])
        assert s["txt"] == describe(other, "objects") != describe(scene, "objects")
        assert other.to_dict() != scene.to_dict()
        diff = slot_differences(scene, other)
        assert diff is None or diff >= 2
        # drawn independently: no object of the other scene sits where one of the scene's objects is
        assert not {(o.x, o.y) for o in other.objects} & {(o.x, o.y) for o in scene.objects}


def test_dense_mode_level2_changes_one_listed_object():
    gen = LevelCaptions(image_size=32, n_objects=(2, 4), text_mode="dense")
    for i in range(2, 40, 4):  # level 2 indices
        s = gen.generate(sample_rng(3, i), i)
        scene = Scene.from_dict(s["json"]["scene"])
        first = s["txt"].split(". ", 1)[0] + "."
        assert word_differences(describe(scene, "objects"), first) == 1
        assert s["txt"] != describe(scene, "dense")


def test_generation_is_deterministic(samples):
    gen = LevelCaptions(image_size=32, n_objects=(1, 4), text_mode="objects")
    for i in (0, 1, 2, 3, 57):
        a, b = gen.generate(sample_rng(7, i), i), samples[i]
        assert a["txt"] == b["txt"] and a["json"] == b["json"] and a["score"] == b["score"]
        assert a["image"].tobytes() == b["image"].tobytes()
    other = gen.generate(sample_rng(8, 0), 0)
    assert other["json"]["scene"] != samples[0]["json"]["scene"]


def test_held_out_splits_share_no_scene():
    scenes = {}
    for split in ("train", "val", "test"):
        gen = LevelCaptions(image_size=32, n_objects=(1, 2), split=split, text_mode="objects")
        scenes[split] = {repr(gen.generate(sample_rng(0, i), i)["json"]["scene"]) for i in range(200)}
        assert len(scenes[split]) == 200
    assert not scenes["train"] & scenes["val"]
    assert not scenes["train"] & scenes["test"]
    assert not scenes["val"] & scenes["test"]


def test_the_lower_levels_never_repeat_the_truth():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, (1, 3))
        assert slot_differences(scene, one_attribute_error(scene, rng)[0]) == 1
        wrong, meta = several_errors(scene, rng)
        d = slot_differences(scene, wrong)
        assert (d is None) == (meta["kind"] in ("add", "remove")) and (d is None or d >= 2)
        for level in range(3):
            assert caption_at_level(scene, level, rng, n_objects=(1, 3))[0] != describe(scene)


def test_interleaved_documents_carry_the_corrupted_segments_level():
    gen = InterleavedDocs(image_size=32, n_segments=(2, 4), n_objects=(1, 2))
    for i in range(24):
        d = gen.generate(sample_rng(1, i), i)
        assert gen.validate(d) is None
        meta, level = d["json"], d["score"]
        assert level == i % 4 == meta["level"] and len(d["images"]) == len(d["texts"]) == len(meta["scenes"])
        truths = [describe(Scene.from_dict(sc), "objects") for sc in meta["scenes"]]
        wrong = [j for j, (t, u) in enumerate(zip(d["texts"], truths)) if t != u]
        if level == 3:
            assert wrong == [] and meta["corrupted_segment"] is None and set(meta["segment_levels"]) == {3}
        else:
            assert wrong == [meta["corrupted_segment"]]
            assert meta["segment_levels"][wrong[0]] == level and meta["corruption"]["level"] == level
        again = gen.generate(sample_rng(1, i), i)
        assert again["texts"] == d["texts"] and [im.tobytes() for im in again["images"]] == \
            [im.tobytes() for im in d["images"]]


def test_invalid_samples_are_dropped_and_counted():
    class Broken(LevelCaptions):
        def generate(self, rng, index):
            s = super().generate(rng, index)
            if index % 3 == 0:
                s["txt"] = ""  # invalid
            if index % 3 == 1 and index > 5:
                raise RuntimeError("no free position")  # failed
            return s

    gen = Broken(image_size=32, n_objects=(1, 2))
    assert gen.validate({"image": None, "txt": "x", "score": 1})
    assert gen.validate({**gen.generate(sample_rng(0, 2), 2), "score": 4})
    got = take(GeneratorStream(gen, seed=0), 6)  # indices 1 2 4 5 8 11; 0 3 6 9 invalid, 7 10 failed
    assert all(s["txt"] for s in got) and [s["json"]["index"] for s in got] == [1, 2, 4, 5, 8, 11]
    assert got[-1]["__dropped__"] == 6 and got[-1]["__produced__"] == 6


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(WorldConfigError, match="LevelCaptions.n_objects"):
        LevelCaptions(n_objects=(0, 2))
    with pytest.raises(WorldConfigError, match="LevelCaptions.split"):
        LevelCaptions(split="holdout")
    with pytest.raises(WorldConfigError, match="LevelCaptions.level_weights"):
        LevelCaptions(level_weights=[1, 1, 1])
    with pytest.raises(WorldConfigError, match="InterleavedDocs.n_segments"):
        InterleavedDocs(n_segments=(3, 2))
    gen = LevelCaptions(level_weights=[0, 0, 0, 1], image_size=32)
    assert {gen.generate(sample_rng(0, i), i)["score"] for i in range(8)} == {3}
