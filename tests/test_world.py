"""Tests of the procedural scene world (datagen.world): scenes, rendering, language, QA, edits, tasks."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from datagen.world import (COLOR_RGB, COLORS, EDIT_KINDS, MATERIALS, NUMBER_WORDS, QTYPES, RELATION_MARGIN, SHAPES,
                           SIZES, TASK_FAMILIES, Scene, SceneObject, TaskSamples, WorldCaptions, WorldPairs, WorldQA,
                           build_eval_set, dense_caption, digits_data, edit_scene, get_task_family, make_pair,
                           object_phrase, object_radius, qa_pairs, render_scene, sample_scene, scene_classname,
                           seed_caption)
from datagen.world.render import BACKGROUND
from datagen.world.tasks import digit_box

ATTR_OF_WORD = {v: a for a, vals in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("material", MATERIALS))
                for v in vals}


def rng(seed=0):
    return np.random.default_rng(seed)


def scenes(n, seed=0, n_objects=(2, 6), **kw):
    r = rng(seed)
    return [sample_scene(r, n_objects, **kw) for _ in range(n)]


# -- an independent reader of the generated language ---------------------------------------------

def parse_desc(desc: str) -> tuple[dict, str | None]:
    """"small red cubes" -> ({"size": "small", "color": "red", "shape": "cube"}, None);
    "leftmost object" -> ({}, "leftmost")."""
    words = desc.split()
    if words[0] in ("leftmost", "rightmost"):
        assert words[1:] == ["object"], desc
        return {}, words[0]
    noun = words[-1]
    noun = noun[:-1] if noun.endswith("s") and noun[:-1] in SHAPES + ("object",) else noun
    filt = {ATTR_OF_WORD[w]: w for w in words[:-1]}
    if noun != "object":
        filt["shape"] = noun
    return filt, None


def select(scene: Scene, desc: str) -> list[SceneObject]:
    filt, pos = parse_desc(desc)
    if pos is not None:
        return [(min if pos == "leftmost" else max)(scene.objects, key=lambda o: o.x)]
    return [o for o in scene.objects if all(o.attr(a) == v for a, v in filt.items())]


def unique(scene: Scene, desc: str) -> SceneObject:
    found = select(scene, desc)
    assert len(found) == 1, f"{desc!r} refers to {len(found)} objects"
    return found[0]


def holds(a: SceneObject, rel: str, b: SceneObject) -> bool:
    return {"to the left of": a.x < b.x, "to the right of": a.x > b.x,
            "in front of": a.y > b.y, "behind": a.y < b.y}[rel]


def answer(scene: Scene, question: str) -> str:
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        return str(len(select(scene, m[1])))
    if m := re.fullmatch(r"what (color|shape) is the (.+)\?", question):
        return unique(scene, m[2]).attr(m[1])
    if m := re.fullmatch(r"is there an? (.+)\?", question):
        return "yes" if select(scene, m[1]) else "no"
    if m := re.fullmatch(r"is the (.+?) (to the left of|to the right of|in front of|behind) the (.+)\?", question):
        return "yes" if holds(unique(scene, m[1]), m[2], unique(scene, m[3])) else "no"
    raise AssertionError(f"unparsed question {question!r}")


# -- scenes -------------------------------------------------------------------------------------

def test_scene_determinism_and_json_roundtrip():
    a, b = scenes(50, seed=3), scenes(50, seed=3)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.to_dict() for s in a] != [s.to_dict() for s in scenes(50, seed=4)]
    for s in a:
        assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_every_attribute_value_appears():
    seen = {a: set() for a in ("shape", "color", "size", "material")}
    for s in scenes(500):
        for o in s.objects:
            for a in seen:
                seen[a].add(o.attr(a))
    assert seen == {"shape": set(SHAPES), "color": set(COLORS), "size": set(SIZES), "material": set(MATERIALS)}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_object_counts(n):
    assert all(len(s) == n for s in scenes(30, n_objects=n))


def test_bad_object_count():
    with pytest.raises(ValueError):
        sample_scene(rng(), 7)


def test_non_overlap_and_relation_margins():
    # includes the hardest case: six large objects
    for s in scenes(300) + scenes(100, seed=1, n_objects=6, sizes=("large",)):
        for i, a in enumerate(s.objects):
            ra = object_radius(a)
            assert ra <= a.x <= 1 - ra and ra <= a.y <= 1 - ra
            for b in s.objects[i + 1:]:
                assert np.hypot(a.x - b.x, a.y - b.y) >= ra + object_radius(b)
                assert abs(a.x - b.x) >= RELATION_MARGIN and abs(a.y - b.y) >= RELATION_MARGIN


def test_glyphs_do_not_overlap_in_pixels():
    # Each object rendered alone: the non-background pixel sets of a scene's objects are disjoint.
    for s in scenes(10, n_objects=6):
        masks = [np.any(np.asarray(render_scene(Scene((o,)), 224)) != BACKGROUND, axis=-1) for o in s.objects]
        assert all(m.any() for m in masks)
        assert (np.sum(masks, axis=0) <= 1).all()


# -- rendering ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64, 224])
def test_render_sizes(size):
    im = render_scene(scenes(1)[0], size, rng())
    assert im.mode == "RGB" and im.size == (size, size)


@pytest.mark.parametrize("size", [16, 225, 0])
def test_render_bad_size(size):
    with pytest.raises(ValueError, match=str(size)):
        render_scene(scenes(1)[0], size)


def test_render_determinism_and_jitter():
    s = scenes(1)[0]
    assert render_scene(s, 64, rng(5)).tobytes() == render_scene(s, 64, rng(5)).tobytes()
    assert render_scene(s, 64, rng(5)).tobytes() != render_scene(s, 64, rng(6)).tobytes()
    assert render_scene(s, 64).tobytes() == render_scene(s, 64).tobytes()


def test_blank_scene_is_background():
    arr = np.asarray(render_scene(Scene(()), 64))
    assert (arr == BACKGROUND).all()
    jittered = np.asarray(render_scene(Scene(()), 64, rng(1)))
    assert jittered.min() >= 180  # still light


def test_glyphs_distinct_at_32px():
    def mask(shape, size="small", material="rubber", color="red"):
        im = render_scene(Scene((SceneObject(shape, color, size, material, 0.5, 0.5),)), 32)
        return np.asarray(im).astype(int)

    for size in SIZES:
        imgs = [mask(s, size) for s in SHAPES]
        for i in range(3):
            for j in range(i + 1, 3):
                assert np.abs(imgs[i] - imgs[j]).sum() > 255 * 3, (SHAPES[i], SHAPES[j], size)
        assert np.abs(mask("sphere", size, "metal") - mask("sphere", size, "rubber")).sum() > 255 * 3


def test_colors_rendered():
    # The centre pixel of a large rubber sphere has the colour's RGB.
    for c in COLORS:
        arr = np.asarray(render_scene(Scene((SceneObject("sphere", c, "large", "rubber", 0.5, 0.5),)), 64))
        assert tuple(arr[32, 32]) == COLOR_RGB[c]


# -- language -----------------------------------------------------------------------------------

def test_object_phrase():
    o = SceneObject("cube", "red", "small", "metal", 0.5, 0.5)
    assert object_phrase(o, det="a") == "a small red metal cube"
    assert object_phrase(o, ("color",)) == "red object"
    assert object_phrase(o, ("material", "shape"), "the") == "the metal cube"
    assert NUMBER_WORDS[:4] == ("zero", "one", "two", "three") and NUMBER_WORDS[10] == "ten"


def test_dense_caption_is_complete_and_true():
    for s in scenes(100, n_objects=(1, 6)):
        cap = dense_caption(s)
        assert NUMBER_WORDS[len(s)] + " object" in cap
        for o in s.objects:
            assert object_phrase(o, det="a") in cap
        rels = re.findall(r"the ([a-z ]+?) is (to the left of|to the right of) the ([a-z ]+?) and (behind|in front of) it\.",
                          cap)
        n_unique = sum(len(select(s, object_phrase(o))) == 1 for o in s.objects)
        assert len(rels) == n_unique * (n_unique - 1) // 2
        for a, hrel, b, drel in rels:
            oa, ob = unique(s, a), unique(s, b)
            assert holds(oa, hrel, ob) and holds(oa, drel, ob)


def test_seed_captions_true_and_varied():
    r = rng(2)
    caps = set()
    for s in scenes(300, n_objects=(1, 6)):
        cap = seed_caption(s, r)
        caps.add(cap)
        assert cap and cap.endswith(".")
        if m := re.search(rf"({'|'.join(NUMBER_WORDS)}) objects?\.", cap):
            assert m[1] == NUMBER_WORDS[len(s)]
        elif m := re.search(r"an? (\w+) to the left of an? (\w+)\.", cap):
            assert holds(unique(s, m[1]), "to the left of", unique(s, m[2]))
        else:  # one or two object phrases, each naming a real object
            body = re.sub(r"^(a photo of|a picture of|a rendering of|an image of|there is|a simple scene with) ", "", cap)
            for phrase in re.split(r" and | next to ", body.rstrip(".")):
                assert select(s, phrase.split(" ", 1)[1]), (cap, phrase)
    assert len(caps) > 150


def test_qa_answers_correct():
    r = rng(7)
    types = set()
    for s in scenes(200, n_objects=(1, 6)):
        for q in qa_pairs(s, r) + qa_pairs(s, r, n=8):
            assert q.qtype in QTYPES
            assert q.answer == answer(s, q.question), q
            assert q.choices is None or q.answer in q.choices
            types.add(q.qtype)
    assert types == set(QTYPES)


def test_qa_default_one_per_type():
    s = scenes(1, n_objects=5)[0]
    qs = qa_pairs(s, rng())
    assert [q.qtype for q in qs] == [t for t in QTYPES if t in {q.qtype for q in qs}]
    assert not any(q.qtype == "relation" for q in qa_pairs(scenes(1, n_objects=1)[0], rng()))


# -- edits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["replace_shape", "replace_color", "replace_shape_color"])
def test_replace_edits(kind):
    fields = {"replace_shape": {"shape"}, "replace_color": {"color"}, "replace_shape_color": {"shape", "color"}}[kind]
    r = rng(11)
    for s in scenes(50, n_objects=(4, 6)):
        new, edit = edit_scene(s, kind, r, k=2)
        assert edit["kind"] == kind and len(new) == len(s)
        changed = {c["index"] for c in edit["changes"]}
        assert len(changed) == 2 and len(edit["changes"]) == 2 * len(fields)
        for c in edit["changes"]:
            assert c["field"] in fields and c["from"] != c["to"]
            assert s.objects[c["index"]].attr(c["field"]) == c["from"]
            assert new.objects[c["index"]].attr(c["field"]) == c["to"]
        for i, (a, b) in enumerate(zip(s.objects, new.objects)):
            diff = {f for f, v in asdict(a).items() if asdict(b)[f] != v}
            assert diff == (fields if i in changed else set())


def test_add_remove_blank_edits():
    r = rng(12)
    for s in scenes(40, n_objects=(2, 5)):  # adding keeps the scene within MAX_OBJECTS = 6
        added, e = edit_scene(s, "add", r)
        assert added.objects[:-1] == s.objects and e["changes"] == [{"index": len(s), "object": asdict(added.objects[-1])}]
        new = added.objects[-1]
        for o in s.objects:
            assert np.hypot(o.x - new.x, o.y - new.y) >= object_radius(o) + object_radius(new)
        removed, e = edit_scene(s, "remove", r)
        i = e["changes"][0]["index"]
        assert removed.objects == s.objects[:i] + s.objects[i + 1:] and e["changes"][0]["object"] == asdict(s.objects[i])
        blank, e = edit_scene(s, "blank", r)
        assert len(blank) == 0 and [c["object"] for c in e["changes"]] == [asdict(o) for o in s.objects]
    with pytest.raises(ValueError):
        edit_scene(scenes(1, n_objects=1)[0], "remove", r)
    with pytest.raises(ValueError, match="valid kinds"):
        edit_scene(scenes(1)[0], "rotate", r)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_make_pair(kind):
    p = make_pair(rng(13), kind=kind, k=2)
    assert p["original"] != p["modified"]
    a, b = np.asarray(p["image_original"]), np.asarray(p["image_modified"])
    assert a.shape == b.shape == (64, 64, 3) and (a != b).any()
    p2 = make_pair(rng(13), kind=kind, k=2)
    assert p2["edit"] == p["edit"] and p2["image_modified"].tobytes() == p["image_modified"].tobytes()
    if kind == "blank":
        assert len(np.unique(b.reshape(-1, 3)[:, 0])) <= 12  # only the background gradient remains


# -- task families --------------------------------------------------------------------------------

EXPECTED_CLASSES = {"shape": 3, "color": 8, "count": 6, "material": 2, "size": 2, "relation": 6, "digits": 10}


def test_registry():
    assert set(TASK_FAMILIES) == set(EXPECTED_CLASSES)
    with pytest.raises(KeyError, match="digits"):
        get_task_family("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_family(name):
    fam = get_task_family(name)
    assert fam.name == name and fam.n_classes == EXPECTED_CLASSES[name] == len(set(fam.classnames))
    assert 3 <= len(fam.templates) <= 6 and all(t.count("{}") == 1 for t in fam.templates)
    assert fam.prompts(0)[0] == fam.templates[0].format(fam.classnames[0])
    r = rng(21)
    labels = []
    for _ in range(60):
        im, label, meta = fam.sample_with_meta(r, 32)
        assert im.size == (32, 32) and im.mode == "RGB" and 0 <= label < fam.n_classes
        if "scene" in meta:  # the image's scene really is of the labelled class
            assert scene_classname(fam, Scene.from_dict(meta["scene"])) == fam.classnames[label]
        labels.append(label)
    assert len(set(labels)) == fam.n_classes
    imgs, ys = build_eval_set(fam, 2, seed=5, image_size=32)
    assert ys == [c for c in range(fam.n_classes) for _ in range(2)]
    imgs2, _ = build_eval_set(name, 2, seed=5, image_size=32)
    assert [i.tobytes() for i in imgs] == [i.tobytes() for i in imgs2]
    imgs3, _ = build_eval_set(name, 2, seed=6, image_size=32)
    assert [i.tobytes() for i in imgs] != [i.tobytes() for i in imgs3]


def test_world_family_splits_differ():
    fam = get_task_family("shape")
    a = fam.render_label(rng(1), 0, 64, "train")
    b = fam.render_label(rng(1), 0, 64, "test")
    c = fam.render_label(rng(1), 0, 64, "val")
    assert a.tobytes() != b.tobytes() and c.tobytes() not in (a.tobytes(), b.tobytes())
    with pytest.raises(ValueError):
        fam.render_label(rng(1), 0, 64, "validation")


def test_digits_are_sklearn_images_with_disjoint_splits():
    images, targets, splits = digits_data()
    train, val, test = (set(splits[k].tolist()) for k in ("train", "val", "test"))
    assert not train & test and not train & val and not val & test and len(train | val | test) == 1797
    assert len(val) == 359 and len(test) == 360  # val = the old 80/20 test fifth
    fam = get_task_family("digits")
    r = rng(3)
    for split, pool in (("train", train), ("val", val), ("test", test)):
        for _ in range(40):
            im, label, meta = fam.sample_with_meta(r, 64, split)
            idx = meta["digit_index"]
            assert idx in pool and targets[idx] == label
            # Downscale back to 8x8: dark ink where sklearn has ink.
            ink = 255 - np.asarray(im.convert("L").crop(digit_box(64)).resize((8, 8), Image.BOX), dtype=float)
            assert np.corrcoef(ink.ravel(), images[idx].ravel())[0, 1] > 0.9
    # the eval set takes distinct test digits per class
    imgs, ys = build_eval_set("digits", 5, seed=0, image_size=32)
    assert len({i.tobytes() for i in imgs}) == len(imgs)


def test_caption_vocabulary_covers_task_classes():
    gen = WorldCaptions(image_size=32, n_objects=(1, 6))
    corpus = " ".join(gen.generate(np.random.default_rng([0, i]), i)["txt"] for i in range(1500))
    for name in ("shape", "color", "material", "size", "count", "relation"):
        for cls in get_task_family(name).classnames:
            assert cls in corpus, (name, cls)
    for t in get_task_family("shape").templates + get_task_family("count").templates:
        assert t.split("{}")[0] in corpus


# -- generators -----------------------------------------------------------------------------------

GENERATORS = [WorldCaptions(), WorldCaptions(caption="dense"), WorldCaptions(caption="seed"), WorldQA(), WorldPairs(),
              TaskSamples("relation"), TaskSamples("digits", split="test")]


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: type(g).__name__)
def test_generators(gen):
    for i in range(20):
        a = gen.generate(np.random.default_rng([1, i]), i)
        b = gen.generate(np.random.default_rng([1, i]), i)
        assert gen.validate(a) is None
        json.dumps(a["json"])
        assert {k: v for k, v in a.items() if isinstance(v, (str, int, dict))} == \
               {k: v for k, v in b.items() if isinstance(v, (str, int, dict))}
        for k, v in a.items():
            if isinstance(v, Image.Image):
                assert v.tobytes() == b[k].tobytes()
    bad = dict(a)
    key = next(k for k, v in a.items() if isinstance(v, Image.Image))
    bad[key] = a[key].resize((16, 16))
    assert gen.validate(bad) is not None
    if "txt" in a:
        assert gen.validate({**a, "txt": " "}) is not None


def test_generator_in_stream():
    from datagen.stream import GeneratorStream, take

    out = take(GeneratorStream(WorldCaptions(), seed=0), 5)
    assert len(out) == 5 and all(s["__dropped__"] == 0 for s in out)
    assert [s["json"]["index"] for s in out] == list(range(5))
