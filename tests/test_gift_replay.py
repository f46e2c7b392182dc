"""GIFT replay synthesis: prompt pools, backends (world renderer, tiny diffusers) and cached replay sets."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from datagen.gift import (DiffusersT2I, TextToImage, WorldT2I, build_pool, imagenet_classnames, is_complete,
                          make_replay_set, part_name, replay_set_hash, tiny_diffusers_pipeline, wait_complete,
                          world_base_prompts)
from datagen.gift.replay import ReplayDataset
from datagen.shards import read_manifest
from datagen.world import TASK_FAMILIES

ORDER = ["shape", "color", "material", "digits"]


def first_template_prompts(name):
    fam = TASK_FAMILIES[name]
    return [fam.templates[0].format(c) for c in fam.classnames]


def world_pool(t):
    """The pool of task index ``t`` in ORDER (tasks before t only)."""
    return build_pool("world", [TASK_FAMILIES[n] for n in ORDER[:t]])


class ScriptedBackend(TextToImage):
    """Deterministic fake: solid colour from the seed; black or None for chosen item seeds; can fail."""

    name = "scripted"

    def __init__(self, black=(), none=(), fail_after_calls=None, tag="a"):
        self.black, self.none, self.fail_after_calls, self.tag = set(black), set(none), fail_after_calls, tag
        self.calls, self.seen_seeds = 0, []

    def config(self):
        return {"backend": self.name, "tag": self.tag}

    def generate(self, prompts, seeds):
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise RuntimeError("simulated crash")
        self.seen_seeds += list(seeds)
        out = []
        for s in seeds:
            if s in self.none:
                out.append(None)
            elif s in self.black:
                out.append(Image.new("RGB", (8, 8), 0))
            else:
                rgb = tuple(int(v) for v in np.random.default_rng(s).integers(1, 255, 3))
                out.append(Image.new("RGB", (8, 8), rgb))
        return out


def shard_items(set_dir):
    """{key: (png bytes, txt, json)} over every part of a set (raw tar members: byte-level comparison)."""
    items = {}
    for part in sorted(p for p in os.listdir(set_dir) if p.startswith("w")):
        for s in read_manifest(os.path.join(set_dir, part))["shards"]:
            with tarfile.open(os.path.join(set_dir, part, s["name"])) as tf:
                for m in tf.getmembers():
                    key, ext = m.name.split(".", 1)
                    items.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return {k: (v["png"], v["txt"].decode(), json.loads(v["json"])) for k, v in items.items()}


# ------------------------------------------------------------------------------------------------ pools
def test_pool_excludes_current_task_and_includes_earlier_first_templates():
    pool = world_pool(2)  # task "material": shape and color came before
    base = world_base_prompts()
    assert list(pool.prompts[:len(base)]) == base
    for name in ("shape", "color"):
        for p in first_template_prompts(name):
            assert p in pool
        # only the first template joins the pool
        assert TASK_FAMILIES[name].templates[1].format(TASK_FAMILIES[name].classnames[0]) not in pool
    for name in ("material", "digits"):  # current and later tasks
        assert not any(p in pool for p in first_template_prompts(name))
    assert pool.counts() == {"base": len(base), "task0": 3, "task1": 8}
    # task 0's pool is the base pool alone
    assert world_pool(0).prompts == tuple(base)


def test_imagenet_pool_and_tuple_tasks():
    names = imagenet_classnames()
    assert len(names) == 1000 == len(set(names)) and names[0] == "tench"
    pool = build_pool("imagenet", [(["goldfish", "zebra wing"], "a photo of a {}."), (["x"], "art of {}.")])
    assert pool.counts() == {"base": 1000, "task0": 1, "task1": 1}  # "a photo of a goldfish." is already base
    assert pool.prompt_id("a photo of a goldfish.") == 1 and pool.prompt_id("art of x.") == 1001
    assert len(set(pool.prompts)) == len(pool) == 1002


def test_world_full_pool_prompts_are_mutually_exclusive():
    """"world_full": every attribute named, so no base prompt truthfully describes another one's image."""
    from datagen.gift.prompts import world_prompt_spec

    pool = build_pool("world_full")
    specs = [world_prompt_spec(p)["attrs"] for p in pool.prompts]
    assert len(pool) == 2 * 8 * 2 * 3 == len({tuple(sorted(a.items())) for a in specs})
    assert all(set(a) == {"shape", "color", "size", "material"} for a in specs)
    assert set(pool.prompts) < set(world_base_prompts())
    with pytest.raises(ValueError, match="world_full"):
        build_pool("worlds")


def test_world_scenes_pool_adds_two_object_prompts_rendered_as_said():
    from datagen.gift.prompts import world_prompt_describes

    pool = build_pool("world_scenes", [TASK_FAMILIES["count"]])
    pairs = [i for i, s in enumerate(pool.specs) if s["kind"] == "objects"]
    assert len(pairs) == 24 * 23 // 2 and len(pool) == 240 + len(pairs) + 6
    assert pool[pairs[0]] == "a photo of a gray cube and a gray sphere."
    backend = WorldT2I(32)
    two = pool.prompt_id("a photo of two objects.")
    for k, i in enumerate(pairs[::25]):
        _, meta = backend.render(pool[i], k)
        objs = meta["scene"]["objects"]
        want = pool.specs[i]["objects"]
        assert sorted((o["color"], o["shape"]) for o in objs) == sorted((w["color"], w["shape"]) for w in want)
        assert world_prompt_describes(pool.specs[i], meta)
        assert two in pool.describing(meta) and i not in pool.describing(meta, exclude=i)


def test_world_base_prompts_are_renderable_and_described():
    backend = WorldT2I(32)
    prompts = world_base_prompts()
    assert len(prompts) == len(set(prompts)) == 240 and "a photo of a red cube." in prompts
    assert "a photo of a small metal sphere." in prompts
    pool = build_pool("world", [])
    for i, p in enumerate(prompts):
        image, meta = backend.render(p, i)
        (obj,) = meta["scene"]["objects"]
        assert image.size == (32, 32)
        assert all(obj[a] == v for a, v in pool.specs[i]["attrs"].items()), p


def test_sampling_with_replacement_seeded():
    pool = build_pool(["a", "b", "c"])
    draws = pool.sample(300, seed=1)
    assert draws == pool.sample(300, seed=1) and draws != pool.sample(300, seed=2)
    ids = [i for i, _ in draws]
    assert all(pool[i] == p for i, p in draws)
    assert set(ids) == {0, 1, 2} and min(np.bincount(ids)) > 60  # with replacement, roughly uniform
    assert pool.sample(10, 1) == draws[:10]


def test_content_hash_stable_and_sensitive():
    assert world_pool(2).content_hash() == world_pool(2).content_hash()
    assert world_pool(2).content_hash() != world_pool(3).content_hash()
    assert build_pool(["a", "b"]).content_hash() != build_pool(["b", "a"]).content_hash()
    pool, wb = world_pool(1), WorldT2I(64)
    h = replay_set_hash(pool, 100, 0, wb)
    assert h == replay_set_hash(world_pool(1), 100, 0, WorldT2I(64))
    others = [replay_set_hash(world_pool(2), 100, 0, wb), replay_set_hash(pool, 101, 0, wb),
              replay_set_hash(pool, 100, 1, wb), replay_set_hash(pool, 100, 0, WorldT2I(32)),
              replay_set_hash(pool, 100, 0, wb, epoch=1)]
    assert len({h, *others}) == 6


# ------------------------------------------------------------------------------------------------ world backend
def test_world_t2i_renders_what_the_prompt_says():
    backend = WorldT2I(64)
    image, meta = backend.render("a photo of a red cube.", seed=5)
    (obj,) = meta["scene"]["objects"]
    assert (obj["color"], obj["shape"]) == ("red", "cube") and image.size == (64, 64)
    _, meta = backend.render('a photo of the number: "3".', seed=5)
    assert meta["family"] == "digits" and meta["label"] == 3 and "digit_index" in meta
    _, meta = backend.render("a photo of a cube to the left of a sphere.", seed=1)
    assert meta["family"] == "relation"
    a, b = backend.generate(["a photo of a red cube."] * 2, [7, 7])
    c = backend.generate(["a photo of a red cube."], [8])[0]
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    with pytest.raises(ValueError, match="a photo of a dragon"):
        backend.generate(["a photo of a dragon."], [0])


# ------------------------------------------------------------------------------------------------ replay sets
def test_ranks_are_disjoint_and_union_equals_single_rank(tmp_path):
    pool, backend = world_pool(2), WorldT2I(32)
    d = make_replay_set(pool, 13, 3, backend, tmp_path / "w2", rank=0, world_size=2, batch_size=4, progress=False)
    assert not is_complete(d)
    with pytest.raises(TimeoutError):
        wait_complete(d, timeout=0.05, poll=0.01)
    assert make_replay_set(pool, 13, 3, backend, tmp_path / "w2", rank=1, world_size=2, batch_size=3,
                           progress=False) == d
    assert wait_complete(d, timeout=1) == d
    parts = [_part_keys(d, part_name(r, 2)) for r in (0, 1)]
    assert parts == [[f"{i:06d}" for i in range(r, 13, 2)] for r in (0, 1)]  # rank r: items r, r+2, ...
    single = make_replay_set(pool, 13, 3, backend, tmp_path / "w1", progress=False)
    assert single.name == d.name  # same content hash, whatever the world size
    a, b = shard_items(d), shard_items(single)
    assert sorted(a) == sorted(b) == [f"{i:06d}" for i in range(13)]
    assert a == b  # same prompts, json and PNG bytes item for item
    draws = pool.sample(13, 3)
    assert [b[f"{i:06d}"][1] for i in range(13)] == [p for _, p in draws]


def _part_keys(set_dir, part):
    out = []
    for s in read_manifest(set_dir / part)["shards"]:
        with tarfile.open(set_dir / part / s["name"]) as tf:
            out += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
    return out


def test_complete_set_is_reused(tmp_path, monkeypatch):
    pool, backend = world_pool(1), WorldT2I(32)
    d = make_replay_set(pool, 6, 0, backend, tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("regenerated a complete set")

    monkeypatch.setattr(backend, "generate", boom)
    monkeypatch.setattr(backend, "generate_with_meta", boom)
    assert make_replay_set(pool, 6, 0, backend, tmp_path, progress=False) == d
    # another epoch is another set
    with pytest.raises(AssertionError):
        make_replay_set(pool, 6, 0, backend, tmp_path, epoch=1, progress=False)


def test_a_damaged_shard_of_a_complete_set_is_regenerated_not_reused(tmp_path, caplog):
    pool = world_pool(1)
    d = make_replay_set(pool, 10, 0, ScriptedBackend(), tmp_path, batch_size=2, shard_size=4, progress=False)
    reference = shard_items(d)
    shard = d / part_name(0, 1) / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    again = ScriptedBackend()
    with caplog.at_level("WARNING"):
        assert make_replay_set(pool, 10, 0, again, tmp_path, batch_size=2, shard_size=4, progress=False) == d
    assert any("differ from their recorded sha256" in r.getMessage() and "shard-000001.tar" in r.getMessage()
               for r in caplog.records)
    assert len(again.seen_seeds) == 6  # shard 0 (items 0-3) kept; shards 1-2 (items 4-9) made again
    assert is_complete(d) and shard_items(d) == reference
    with pytest.raises(RuntimeError, match="shard-000000.tar differs from the sha256"):
        first = d / part_name(0, 1) / "shard-000000.tar"
        first.write_bytes(first.read_bytes()[:-1] + b"x")
        make_replay_set(pool, 10, 0, ScriptedBackend(), tmp_path, batch_size=2, shard_size=4, progress=False,
                        world_size=2)


def test_partial_set_is_resumed_without_regenerating(tmp_path):
    pool = world_pool(1)
    crashing = ScriptedBackend(fail_after_calls=3)  # batches of 2, shards of 4: 1 shard survives the crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_replay_set(pool, 10, 0, crashing, tmp_path, batch_size=2, shard_size=4, progress=False)
    d = next(tmp_path.iterdir())
    assert not is_complete(d) and (d / part_name(0, 1) / "shard-000000.tar").exists()
    resumed = ScriptedBackend()
    assert make_replay_set(pool, 10, 0, resumed, tmp_path, batch_size=2, shard_size=4, progress=False) == d
    assert is_complete(d)
    fresh_backend = ScriptedBackend()
    fresh = make_replay_set(pool, 10, 0, fresh_backend, tmp_path / "fresh", batch_size=2, shard_size=4,
                            progress=False)
    assert len(resumed.seen_seeds) == 6 and resumed.seen_seeds == fresh_backend.seen_seeds[4:]
    assert shard_items(d) == shard_items(fresh)
    assert read_manifest(d / part_name(0, 1))["resumed_samples"] == 4


def test_black_and_none_images_dropped_and_counted(tmp_path):
    from datagen.gift import item_seed

    pool = world_pool(1)
    backend = ScriptedBackend(black={item_seed(0, 1), item_seed(0, 4)}, none={item_seed(0, 6)})
    d = make_replay_set(pool, 8, 0, backend, tmp_path, rank=0, world_size=1, batch_size=3, progress=False)
    meta = read_manifest(d / part_name(0, 1))["meta"]
    assert meta["dropped"] == 3 and sorted(meta["dropped_indices"]) == [1, 4, 6]
    assert json.loads((d / "COMPLETE").read_text())["dropped"] == 3
    ds = ReplayDataset(d, transform=lambda im: np.asarray(im, np.float32))
    assert len(ds) == 5 and ds.dropped == 3 and ds.indices == [0, 2, 3, 5, 7]
    draws = pool.sample(8, 0)
    item = ds[1]
    assert item["prompt_id"] == draws[2][0] and item["txt"] == draws[2][1] and item["image"].shape == (8, 8, 3)


def test_replay_dataset_with_transform(tmp_path):
    torch = pytest.importorskip("torch")
    pool = build_pool(["a photo of a red cube.", 'a photo of the number: "3".'])
    d = make_replay_set(pool, 6, 1, WorldT2I(32), tmp_path, progress=False)

    def to_tensor(im):
        return torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)

    ds = ReplayDataset(d, transform=to_tensor, resize=16)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (6, 3, 16, 16)
    # the label of a pair is its prompt's id: same prompt, same label
    assert all(pool[int(pid)] == txt for pid, txt in zip(batch["prompt_id"], batch["txt"]))
    with pytest.raises(FileNotFoundError):
        ReplayDataset(tmp_path / "nope")


def test_world_prompt_describes_hand_cases():
    from datagen.gift.prompts import world_prompt_describes, world_prompt_spec

    one = {"scene": {"objects": [{"shape": "cube", "color": "red", "size": "small", "material": "metal",
                                  "x": 0.5, "y": 0.5}]}}
    two = {"scene": {"objects": [dict(one["scene"]["objects"][0], x=0.2),
                                 {"shape": "sphere", "color": "blue", "size": "large", "material": "rubber",
                                  "x": 0.8, "y": 0.5}]}}

    def says(prompt, image):
        return world_prompt_describes(world_prompt_spec(prompt), image)

    assert says("a photo of a red cube.", one) and says("a photo of a small metal cube.", one)
    assert not says("a photo of a blue cube.", one) and not says("a photo of a red cube.", two)  # one object only
    assert says("a photo of a cube.", one) and says("a photo of a metal object.", one)  # task-family prompts
    assert says("a photo of one object.", one) and not says("a photo of one object.", two)
    assert says("a photo of a cube to the left of a sphere.", two) and not says("a photo of a sphere to the left of a cube.", two)
    digit = {"family": "digits", "label": 3, "digit_index": 7}
    assert says('a photo of the number: "3".', digit) and not says('a photo of the number: "4".', digit)
    assert not says("a photo of one object.", digit)


def test_replay_set_records_which_prompts_describe_each_image(tmp_path):
    torch = pytest.importorskip("torch")
    from datagen.gift.prompts import world_prompt_describes

    pool = build_pool("world_full", [TASK_FAMILIES["shape"], TASK_FAMILIES["count"]])
    backend = WorldT2I(32)
    d = make_replay_set(pool, 40, 3, backend, tmp_path, progress=False)
    ds = ReplayDataset(d, describes=True)
    assert ds.pool_size == len(pool) and ds.describes is not None
    assert "describes" not in ReplayDataset(d)[0]  # the multi-hot only when asked for
    for k in range(len(ds)):
        pid = ds.prompt_ids[k]
        _, meta = backend.render(pool[pid], ds_seed(d, k))
        truth = {j for j in range(len(pool)) if j != pid and world_prompt_describes(pool.specs[j], meta)}
        assert set(ds.describes[k]) == truth
        item = ds[k]
        assert item["describes"].dtype == torch.bool and item["describes"].shape == (len(pool),)
        assert set(item["describes"].nonzero().flatten().tolist()) == truth
        # a one-object base image is always "one object" and its shape's prompt
        if pool.sources[pid] == "base":
            assert {pool.prompt_id("a photo of one object."),
                    pool.prompt_id(f"a photo of a {pool.specs[pid]['attrs']['shape']}.")} <= truth


def ds_seed(set_dir, k):
    """The image seed item k of a replay set was rendered with (from its shard json)."""
    from datagen.shards import ShardStream

    urls = sorted(str(p) for p in set_dir.rglob("*.tar"))
    rows = sorted((int(s["json"]["index"]), int(s["json"]["seed"])) for s in ShardStream(urls, shuffle_shards=False,
                                                                                       epochs=1))
    return rows[k][1]


# ------------------------------------------------------------------------------------------------ diffusers
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return tiny_diffusers_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.mark.parametrize("scheduler", ["pndm", "dpm"])
def test_tiny_diffusers_pipeline_generates(tiny_sd, scheduler):
    backend = DiffusersT2I(model=tiny_sd, scheduler=scheduler, steps=2, height=32, width=32, device="cpu",
                           dtype="fp32", batch_size=2)
    images = backend.generate(["a photo of a red cube.", "a photo of a goldfish."], [1, 2])
    assert [im.size for im in images] == [(32, 32)] * 2 and all(im.mode == "RGB" for im in images)
    assert type(backend.pipe.scheduler).__name__ == {"pndm": "PNDMScheduler",
                                                     "dpm": "DPMSolverMultistepScheduler"}[scheduler]
    # one generator per image: an image does not depend on its batch mates
    again = backend.generate(["a photo of a goldfish."], [2])[0]
    assert np.array_equal(np.asarray(again), np.asarray(images[1]))


def test_diffusers_t2i_drops_flagged_and_black_images(tiny_sd):
    from types import SimpleNamespace

    backend = DiffusersT2I(model=tiny_sd, steps=2, height=8, width=8, device="cpu", dtype="fp32")
    ok, black = Image.new("RGB", (8, 8), (9, 9, 9)), Image.new("RGB", (8, 8), 0)
    backend._pipe = lambda prompts, **kw: SimpleNamespace(images=[ok, black, ok],
                                                          nsfw_content_detected=[False, False, True])
    out = backend.generate(["a", "b", "c"], [0, 1, 2])
    assert out[0] is not None and out[1:] == [None, None] and backend.n_dropped == 2


def test_diffusers_t2i_checks(tiny_sd, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        DiffusersT2I(model=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.warns(UserWarning, match="fp32"):
        b = DiffusersT2I(model=tiny_sd, device="cpu", dtype="fp16")
    assert b.dtype == "fp32" and b._pipe is None  # config/hash without loading weights
    c = DiffusersT2I(model=tiny_sd, device="cpu", dtype="fp32", scheduler="dpm", steps=25)
    assert b.config() != c.config() and b.config()["model_fingerprint"] == c.config()["model_fingerprint"]


def test_styled_backend_draws_the_prompt_in_another_style():
    from datagen.gift import StyledWorldT2I, backend_from_config

    styled, plain = backend_from_config({"backend": "world_styled", "image_size": 32}), WorldT2I(32)
    assert isinstance(styled, StyledWorldT2I) and styled.config()["style_version"] >= 1
    prompts = ["a photo of a red cube.", 'a photo of the number: "7".', "a photo of a cube to the left of a sphere.",
               "a photo of three objects."]
    images, metas = styled.generate_with_meta(prompts, [1, 2, 3, 4])
    again = styled.generate(prompts, [1, 2, 3, 4])
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]  # a function of (prompt, seed)
    assert all(im.size == (32, 32) for im in images)
    # the evaluation look is a near-white background; the styled one is dark
    corners = [np.asarray(im, dtype=float)[:3, :3].mean() for im in images]
    plain_corners = [np.asarray(im, dtype=float)[:3, :3].mean() for im in plain.generate(prompts, [1, 2, 3, 4])]
    assert max(corners) < 140 < min(plain_corners)
    assert metas[1] == {"family": "digits", "label": 7, "font": True}  # not an image of the digits task's source
    objects = metas[2]["scene"]["objects"]
    left, right = sorted(objects, key=lambda o: o["x"])
    assert (left["shape"], right["shape"]) == ("cube", "sphere")
    assert len(metas[3]["scene"]["objects"]) == 3
    with pytest.raises(ValueError, match="cannot render"):
        styled.generate(["a watercolour of a dog."], [0])
