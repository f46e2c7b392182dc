"""``synthloop datagen world`` (datagen.cli -> datagen.shards.export_generator): any generator to WebDataset
shards, resumed by re-running the same command, a changed generator/seed refused in one line, shards readable
by plain ``webdataset``; the command line stays light (no torch before parsing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from datagen import cli as dgcli
from datagen.shards import ShardStream, export_generator, read_manifest
from datagen.stream import GeneratorStream, SampleGenerator, strip_bookkeeping, take
from datagen.world import WorldCaptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--generator.init_args.image_size", "32", "--maxcount", "4", "--no_progress"]


def world(out, *args):
    return dgcli.main(["world", "--out", str(out), *map(str, args)])


def shard_bytes(out) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


def read_all(out) -> list[dict]:
    return [{k: (np.asarray(v) if isinstance(v, Image.Image) else v) for k, v in s.items() if not k.startswith("__")
             or k == "__key__"} for s in ShardStream(str(out), epochs=1, shuffle_shards=False)]


def same(a: list[dict], b: list[dict]) -> bool:
    def eq(u, v) -> bool:
        return np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v

    return len(a) == len(b) and all(x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_world_exports_the_online_stream(tmp_path):
    out = tmp_path / "w"
    summary = world(out, "--n", 10, "--seed", 3, *SMALL)
    assert (summary["total"], summary["written"], summary["resumed"], summary["shards"]) == (10, 10, 0, 3)
    got = read_all(out)
    assert [s["__key__"] for s in got] == [f"{i:010d}" for i in range(10)]
    online = [strip_bookkeeping(s) for s in take(GeneratorStream(WorldCaptions(image_size=32), seed=3), 10)]
    assert [s["txt"] for s in got] == [s["txt"] for s in online]
    assert [s["json"] for s in got] == [s["json"] for s in online]
    man = read_manifest(out)
    assert man["total"] == 10 and [s["count"] for s in man["shards"]] == [4, 4, 2]
    meta = man["meta"]
    assert meta["command"] == "synthloop datagen world" and meta["seed"] == 3 and meta["n"] == 10
    assert meta["generator_class"] == "datagen.world.generators.WorldCaptions"
    assert meta["generator"]["image_size"] == 32 and meta["attempted"] == 10 and meta["dropped"] == 0
    assert json.loads((out / "datagen_run.json").read_text())["seed"] == 3
    assert "image_size: 32" in (out / "datagen_config.yaml").read_text()
    assert not [n for n in os.listdir(out) if "tmp" in n]


def test_rerun_continues_and_kill_resumes_byte_for_byte(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    world(fresh, "--n", 20, *SMALL)
    ref = read_all(fresh)
    # n=10, then the same command with n=20: the first 10 stay as they are, 10 more follow
    out = tmp_path / "grown"
    world(out, "--n", 10, *SMALL)
    first = shard_bytes(out)
    summary = world(out, "--n", 20, *SMALL)
    assert (summary["resumed"], summary["written"], summary["total"]) == (10, 10, 20)
    assert {n: b for n, b in shard_bytes(out).items() if n in first} == first
    assert same(read_all(out), ref) and read_manifest(out)["total"] == 20
    # killed inside a shard: its partial shard is dropped, and re-running generates only what no complete
    # shard holds, giving the fresh export byte for byte
    out = tmp_path / "killed"
    real, seen = WorldCaptions.generate, []

    def dying(self, rng, index):
        seen.append(index)
        if index == 14:
            raise KeyboardInterrupt
        return real(self, rng, index)

    monkeypatch.setattr(WorldCaptions, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        world(out, "--n", 20, *SMALL)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == [f"shard-{i:06d}.tar" for i in range(3)]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    seen.clear()
    monkeypatch.setattr(WorldCaptions, "generate",
                        lambda self, rng, index: seen.append(index) or real(self, rng, index))
    summary = world(out, "--n", 20, *SMALL)
    assert seen == list(range(12, 20)) and (summary["resumed"], summary["written"]) == (12, 8)
    assert shard_bytes(out) == shard_bytes(fresh)
    # a shorter n than what is there: nothing generated, nothing removed
    seen.clear()
    summary = world(out, "--n", 5, *SMALL)
    assert seen == [] and summary["total"] == 20 and shard_bytes(out) == shard_bytes(fresh)


def test_a_different_generator_or_seed_is_refused_in_one_line(tmp_path):
    out = tmp_path / "w"
    world(out, "--n", 6, *SMALL)
    before = shard_bytes(out)
    cases = [(["--seed", 1], "different: seed (0 in the export, 1 now)"),
             (["--generator.init_args.caption", "dense"], "different: generator.caption"),
             (["--generator.class_path", "datagen.world.WorldQA"], "different: generator_class"),
             (["--image_format", "png"], "different: image_format")]
    for extra, match in cases:
        with pytest.raises(SystemExit) as err:
            world(out, "--n", 12, *SMALL, *extra)
        msg = str(err.value)
        assert msg.startswith("synthloop datagen: error: cannot resume in ") and match in msg and "\n" not in msg
    assert shard_bytes(out) == before
    assert json.loads((out / "datagen_run.json").read_text())["seed"] == 0
    # --overwrite replaces the export
    summary = world(out, "--n", 5, *SMALL, "--seed", 1, "--overwrite")
    assert summary["total"] == 5 and summary["resumed"] == 0 and read_manifest(out)["meta"]["seed"] == 1
    # shards not written by synthloop datagen are not resumed either
    other = tmp_path / "other"
    other.mkdir()
    (other / "shard-000000.tar").write_bytes((out / "shard-000000.tar").read_bytes())
    with pytest.raises(SystemExit, match="no datagen_run.json"):
        world(other, "--n", 5, *SMALL)


def test_shards_are_plain_webdataset(tmp_path):
    out = tmp_path / "w"
    summary = world(out, "--n", 9, *SMALL)
    ds = wds.WebDataset(summary["pattern"], shardshuffle=False).decode("pil")
    got = list(ds)
    assert [s["__key__"] for s in got] == [f"{i:010d}" for i in range(9)]
    assert all(isinstance(s["jpg"], Image.Image) and s["jpg"].size == (32, 32) for s in got)
    assert all(isinstance(s["txt"], str) and s["txt"] for s in got)
    assert [s["json"]["index"] for s in got] == list(range(9))
    assert json.loads((out / "sizes.json").read_text()) == {f"shard-{i:06d}.tar": c for i, c in enumerate([4, 4, 1])}


def test_yaml_config_any_generator_and_errors(tmp_path, capsys):
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(f"generator:\n  class_path: datagen.world.WorldQA\n  init_args:\n    image_size: 32\n"
                   f"    n_questions: 2\nout: {tmp_path / 'qa'}\nn: 5\nseed: 2\nmaxcount: 2\nimage_format: png\n"
                   f"progress: false\n")
    summary = dgcli.main(["world", "--config", str(cfg)])
    assert summary["total"] == 5 and summary["shards"] == 3 and summary["source"] == "WorldQA"
    got = read_all(tmp_path / "qa")
    assert len(got) == 5 and all(1 <= len(s["json"]["qa"]) <= 2 and s["image"].shape == (32, 32, 3) for s in got)
    with tarfile.open(tmp_path / "qa" / "shard-000000.tar") as tf:
        assert sorted(tf.getnames()) == ["0000000000.json", "0000000000.png", "0000000000.txt",
                                         "0000000001.json", "0000000001.png", "0000000001.txt"]
    parsed, init = dgcli.parse_config(cfg)
    assert parsed.seed == 2 and type(init.generator).__name__ == "WorldQA"
    _, init = dgcli.parse_config(os.path.join(ROOT, "configs", "unicorn", "datagen_world.yaml"))
    assert type(init.generator).__name__ == "UnicornText"
    assert dgcli.main(["world", "--config", str(cfg), "--dry_run"]) is None
    assert "dry run ok: generator datagen.world.generators.WorldQA" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="config error.*generator.*image size 8 is not supported"):
        dgcli.main(["world", "--config", str(cfg), "--generator.init_args.image_size", "8"])
    with pytest.raises(SystemExit, match="config error.*does not implement protocol"):
        dgcli.main(["world", "--out", str(tmp_path / "x"), "--n", "1", "--generator.class_path",
                    "collections.OrderedDict"])
    with pytest.raises(SystemExit, match="config error.*n: must be >= 0"):
        dgcli.main(["world", "--out", str(tmp_path / "x"), "--n", "-1"])
    with pytest.raises(SystemExit, match="does not exist"):
        dgcli.main(["world", "--config", str(tmp_path / "nope.yaml")])


class KeyedGenerator(SampleGenerator):
    """Keys of its own (not stream indices) and every 4th index rejected."""

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        return {"__key__": f"item{index:04d}", "value": float(rng.random()), "label": index % 3}

    def validate(self, sample: dict) -> str | None:
        return "every 4th" if int(sample["__key__"][4:]) % 4 == 3 else None


def test_export_generator_with_own_keys_and_drops(tmp_path):
    out = tmp_path / "k"
    fresh = export_generator(KeyedGenerator(), tmp_path / "fresh", 9, maxcount=4, progress=False)
    assert (fresh["total"], fresh["attempted"], fresh["dropped"]) == (9, 11, 2)  # 3 and 7 rejected
    export_generator(KeyedGenerator(), out, 5, maxcount=4, progress=False)
    grown = export_generator(KeyedGenerator(), out, 9, maxcount=4, progress=False)  # regenerated + skipped
    assert (grown["resumed"], grown["written"], grown["total"]) == (5, 4, 9)
    assert [s["__key__"] for s in read_all(out)] == [s["__key__"] for s in read_all(tmp_path / "fresh")]
    # stream-index keys: the earlier run's part is not generated again, its drops are counted from the keys
    gen = IndexedGenerator()
    fresh = export_generator(gen, tmp_path / "ifresh", 6, maxcount=4, progress=False)
    export_generator(gen, tmp_path / "i", 4, maxcount=4, progress=False)  # kept 0 1 2 4 (3 rejected)
    gen._seen.clear()
    grown = export_generator(gen, tmp_path / "i", 6, maxcount=4, progress=False)
    assert gen._seen == [5, 6] and (grown["resumed"], grown["written"], grown["total"]) == (4, 2, 6)
    assert (grown["attempted"], grown["dropped"]) == (fresh["attempted"], fresh["dropped"]) == (7, 1)
    assert shard_bytes(tmp_path / "i") == shard_bytes(tmp_path / "ifresh")
    with pytest.raises(RuntimeError, match="different: seed"):
        export_generator(gen, tmp_path / "i", 6, seed=2, progress=False)


class IndexedGenerator(SampleGenerator):
    """Stream-index keys (the default); index 3 rejected; records the indices it generates (in a private
    attribute: the public ones are the generator's identity, datagen_run.json)."""

    def __init__(self) -> None:
        self._seen: list[int] = []

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        self._seen.append(index)
        return {"txt": f"sample {index}", "value": float(rng.random())}

    def validate(self, sample: dict) -> str | None:
        return "three" if sample["txt"] == "sample 3" else None


def test_the_command_line_is_light_and_lists_both_kinds(capsys):
    assert dgcli.main(["--help"]) is None
    text = capsys.readouterr().out
    assert "world" in text and "unicorn" in text
    code = ("import sys\nfrom datagen import cli\nheavy = lambda: [m for m in ('torch', 'numpy', 'webdataset', 'PIL') "
            "if m in sys.modules]\nassert not heavy(), heavy()\ntry:\n    cli.main(['world', '--help'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\nassert not heavy(), heavy()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--generator" in proc.stdout and "--n N" in proc.stdout and "WorldCaptions" in proc.stdout
    # the names that moved to datagen.unicorn.export still resolve from datagen.cli
    from datagen.unicorn import export as uexport

    assert dgcli.export_unicorn is uexport.export_unicorn and dgcli.RejectLog is uexport.RejectLog
    assert dgcli.Stage3.__module__ == "datagen.unicorn.stage3"
