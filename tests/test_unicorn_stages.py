"""Unicorn stages 1-2 as an online generator (datagen.unicorn.stages.UnicornText) and its shard export
(``synthloop datagen unicorn``: parsed by datagen.cli, run by datagen.unicorn.export): determinism, valid
items, rejection counting, seed files, resumable export, shards loading back into the OnlineDataModule."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import numpy as np
import pytest

from datagen import cli as dgcli
from datagen.unicorn import export as uexport
from datagen.shards import ShardStream, read_manifest
from datagen.stream import GeneratorStream, sample_rng, strip_bookkeeping, take
from datagen.text import PROMPT_DIR, TextBackend, load_prompt
from datagen.unicorn.stages import UnicornText, reject_counts

CONFIG = """\
generator:
  class_path: datagen.unicorn.stages.UnicornText
  init_args:
    stage: instructions
    n_objects: [1, 3]
    backend:
      class_path: datagen.text.WorldWriter
n: 10
maxcount: 8
progress: false
"""


def gen_sample(gen, seed, index):
    return gen.generate(sample_rng(seed, index), index)


# -- the generator ----------------------------------------------------------------------------------

def test_determinism():
    a, b = UnicornText(stage="instructions"), UnicornText(stage="instructions")
    for i in (0, 5, 17):
        assert gen_sample(a, 3, i) == gen_sample(b, 3, i)  # fresh instances: same seed/index -> same sample
    # interleaving other samples (the world writer's bound scenes) does not change a sample
    x = gen_sample(a, 3, 5)
    gen_sample(a, 3, 6)
    assert gen_sample(a, 3, 5) == x
    assert gen_sample(a, 3, 5) != gen_sample(a, 4, 5) and gen_sample(a, 3, 5) != gen_sample(a, 3, 6)
    # through the stream: same seed -> same samples
    s1 = [strip_bookkeeping(s) for s in take(GeneratorStream(UnicornText(stage="captions"), seed=1), 6)]
    s2 = [strip_bookkeeping(s) for s in take(GeneratorStream(UnicornText(stage="captions"), seed=1), 6)]
    assert s1 == s2 and all(set(s) >= {"seed", "caption", "json"} and "items" not in s for s in s1)


def test_world_instruction_items_are_valid():
    samples = take(GeneratorStream(UnicornText(stage="instructions", n_objects=(1, 4)), seed=0), 30)
    kinds = Counter()
    for s in samples:
        assert s["__dropped__"] == 0 and s["rejects"] == {} and 6 <= len(s["items"]) <= 8
        for item in s["items"]:
            kinds[item["type"]] += 1
            assert item["question"] and item["answer"]
            if item["type"] == "mc":
                assert len(item["options"]) == 4 and len(set(item["options"])) == 4
                assert item["answer"] in "ABCD"[: len(item["options"])] and len(item["answer"]) == 1
    assert set(kinds) == {"mc", "open", "reasoning"}
    assert reject_counts(samples) == Counter()


# -- rejection path ---------------------------------------------------------------------------------

CAPTION_T = load_prompt(os.path.join(PROMPT_DIR, "caption_expansion.yaml"))
INSTR_T = load_prompt(os.path.join(PROMPT_DIR, "instructions.yaml"))
GOOD_MC = {"type": "mc", "question": "what color is the cube?", "options": ["red", "blue", "green", "gray"],
           "answer": "A"}
# index % 6 -> (stage-1 output, stage-2 output); None = a good caption (the seed, expanded)
SCRIPT = {
    0: ("I'm sorry, but I cannot help with that request.", None),
    1: (None, "Sure! Here are some questions about the image, all about colours."),
    2: (None, '[{"type": "open", "question": "how many cubes are there?", "answer": "tw'),
    3: (None, json.dumps([GOOD_MC, dict(GOOD_MC, question="what shape is it?", answer="E"),
                          {"type": "open", "question": "is there a sphere?"}])),
    4: (None, "I apologize, but as an AI I can't write that."),
    5: ("", None),
}


class FakeBackend(TextBackend):
    """Scripted LLM: refusals, garbage and truncated JSON, a partly valid list (see SCRIPT)."""

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay, self.calls, self.threads = delay, 0, set()

    def complete(self, prompts, *, max_new_tokens=512, temperature=0.7, seed=0):
        self.calls += 1
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        out = []
        for msgs in prompts:
            index, stage = divmod(seed, 2)  # UnicornText passes seed = 2 * index + stage
            caption_out, instr_out = SCRIPT[index % 6]
            if stage == 0:
                fields = CAPTION_T.match(msgs)
                out.append(caption_out if caption_out is not None else
                           f"{fields['seed'].rstrip('.')} on a plain grey floor, lit by soft light from above.")
            else:
                out.append(instr_out if instr_out is not None else json.dumps([GOOD_MC]))
        return out


EXPECTED_DROPS = {"caption:refusal": 2, "instructions:not_json": 2, "instructions:truncated_json": 2,
                  "instructions:refusal": 1, "caption:empty": 1}  # indices 0-9 but 3 (kept), 9 (kept)


def test_rejections_dropped_and_counted(tmp_path):
    gen = UnicornText(stage="instructions", backend=FakeBackend())
    # straight from the generator: reasons on the samples
    reasons = [gen_sample(gen, 0, i).get("__reject__") for i in range(6)]
    assert reasons == ["caption:refusal", "instructions:not_json", "instructions:truncated_json", None,
                       "instructions:refusal", "caption:empty"]
    # through GeneratorStream: only index 3 (mod 6) survives, the others are dropped and counted
    log = uexport.RejectLog(str(tmp_path / "drops.jsonl"), 0, validate=gen.validate)
    got = take(GeneratorStream(gen, seed=0, validate=log.validate), 3)
    log.close()
    assert [s["json"]["index"] for s in got] == [3, 9, 15]
    assert [s["__dropped__"] for s in got] == [3, 8, 13]
    assert all(s["items"] == [GOOD_MC] and s["rejects"] == {"answer_letter": 1, "missing_field": 1} for s in got)
    assert reject_counts(got) == Counter(answer_letter=3, missing_field=3)
    assert dict(log.dropped) == {"caption:refusal": 3, "instructions:not_json": 3,
                                 "instructions:truncated_json": 3, "instructions:refusal": 2, "caption:empty": 2}
    assert sum(log.dropped.values()) == got[-1]["__dropped__"]
    assert log.item_rejects == Counter(answer_letter=3, missing_field=3, not_json=3, truncated_json=3, refusal=2)
    # the export writes the same counts into the manifest
    summary = uexport.export_unicorn(UnicornText(stage="instructions", backend=FakeBackend()), tmp_path / "out", 2,
                                   progress=False)
    meta = read_manifest(tmp_path / "out")["meta"]
    assert meta["dropped"] == EXPECTED_DROPS and meta["dropped_total"] == 8 == summary["dropped_total"]
    assert meta["attempted"] == 10 and meta["written"] == 2 and meta["items_kept"] == {"mc": 2}
    assert meta["item_rejects"] == {"answer_letter": 2, "missing_field": 2, "not_json": 2, "truncated_json": 2,
                                    "refusal": 1}
    assert meta["generator"]["backend"] == {"backend": "fake"}


def test_concurrent_export_matches_sequential(tmp_path):
    seq = uexport.export_unicorn(UnicornText(stage="instructions", backend=FakeBackend()), tmp_path / "a", 6,
                               progress=False)
    backend = FakeBackend(delay=0.02)
    t0 = time.perf_counter()
    par = uexport.export_unicorn(UnicornText(stage="instructions", backend=backend), tmp_path / "b", 6,
                               concurrency=8, progress=False)
    assert time.perf_counter() - t0 < 0.02 * backend.calls / 2 and len(backend.threads) > 1  # really concurrent
    for k in ("dropped", "item_rejects", "attempted", "written"):
        assert seq[k] == par[k]
    assert read_all(tmp_path / "a") == read_all(tmp_path / "b")


# -- seed files -------------------------------------------------------------------------------------

def test_seed_file(tmp_path):
    seeds = ["a small red cube.", "", "a picture of two spheres.", "there are three objects."]
    path = tmp_path / "seeds.txt"
    path.write_text("\n".join(seeds) + "\n")
    gen = UnicornText(stage="instructions", seeds=str(path))
    assert gen.config()["seeds"]["lines"] == 3
    samples = [gen_sample(gen, 0, i) for i in range(6)]
    assert [s["seed"] for s in samples] == [seeds[0], seeds[2], seeds[3]] * 2  # empty lines skipped, index mod n
    assert all("__reject__" not in s and s["items"] for s in samples)
    assert {"red", "cube"} <= set(samples[0]["caption"].replace(",", " ").split())
    assert "sphere" in samples[1]["caption"]
    assert samples[2]["caption"].startswith("there are three objects")
    assert gen_sample(UnicornText(stage="instructions", seeds=str(path)), 0, 4) == samples[4]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no non-empty line"):
        UnicornText(seeds=str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UnicornText(seeds=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="render_size needs world seeds"):
        UnicornText(seeds=str(path), render_size=32)


# -- the datagen CLI --------------------------------------------------------------------------------

def read_all(out):
    return [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
            for s in ShardStream(str(out), epochs=1, shuffle_shards=False)]


def shard_bytes(out):
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "datagen.yaml"
    path.write_text(CONFIG)
    return str(path)


def run(config, out, *args):
    return dgcli.main(["unicorn", "--config", config, "--out", str(out), *map(str, args)])


def test_cli_resume_equals_fresh(tmp_path, config, monkeypatch):
    fresh = tmp_path / "fresh"
    run(config, fresh, "--n", 40)
    ref = read_all(fresh)
    assert len(ref) == 40 and [s["__key__"] for s in ref] == [f"{i:010d}" for i in range(40)]
    # a finished short export, extended with --resume: same samples as a fresh n=40 export
    out = tmp_path / "resumed"
    run(config, out, "--n", 20)
    summary = run(config, out, "--n", 40, "--resume")
    assert (summary["resumed"], summary["written"], summary["total"]) == (20, 20, 40)
    assert read_all(out) == ref
    man, man_ref = read_manifest(out), read_manifest(fresh)
    for k in ("items_kept", "item_rejects", "dropped", "attempted", "generator", "seed"):
        assert man["meta"][k] == man_ref["meta"][k], k
    # a real interruption in the middle of a shard: the partial shard is dropped, resume completes it
    # byte for byte, and the samples already in complete shards are not generated again
    out = tmp_path / "killed"
    real = UnicornText.generate
    seen = []

    def dying(self, rng, index):
        seen.append(index)
        if index == 27:
            raise KeyboardInterrupt
        return real(self, rng, index)

    monkeypatch.setattr(UnicornText, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, "--n", 40)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == ["shard-000000.tar", "shard-000001.tar",
                                                                       "shard-000002.tar"]
    seen.clear()
    monkeypatch.setattr(UnicornText, "generate", lambda self, rng, index: seen.append(index) or real(self, rng, index))
    run(config, out, "--n", 40, "--resume")
    assert seen == list(range(24, 40))  # only what was not in a complete shard
    assert shard_bytes(out) == shard_bytes(fresh)
    assert read_manifest(out)["total"] == 40
    # resuming with other settings is refused (instead of mixing two data sets)
    with pytest.raises(SystemExit, match="different: seed"):
        run(config, out, "--n", 50, "--resume", "--seed", 1)
    with pytest.raises(SystemExit, match="--resume to continue"):
        run(config, out, "--n", 50)


def test_cli_shards_load_in_datamodule(tmp_path, config):
    from train.core.datamodule import OnlineDataModule

    out = tmp_path / "shards"
    run(config, out, "--n", 20, "--seed", 5)
    dm = OnlineDataModule(shards=str(out), batch_size=8, num_workers=0)
    batches = []
    for batch in dm.make_loader(dm.build_stream()):
        batches.append(batch)
        if len(batches) == 3:
            break
    b = batches[0]
    assert len(b["caption"]) == 8 and all(isinstance(c, str) and c for c in b["caption"])
    assert all(isinstance(items, list) and items for items in b["items"])
    # the first epoch (20 samples) is exactly the online stream's first 20 samples
    epoch = [(k, c) for bt in batches for k, c in zip(bt["__key__"], bt["caption"])][:20]
    online = take(GeneratorStream(UnicornText(stage="instructions", n_objects=(1, 3)), seed=5), 20)
    assert sorted(epoch) == sorted((s["__key__"], s["caption"]) for s in online)


def test_cli_stage3(tmp_path, config):
    out = tmp_path / "s3"
    summary = run(config, out, "--n", 12, "--stage3.clip_model", "synthloop-micro-vit32", "--stage3.batch_size", 5)
    got = read_all(out)
    emb = np.stack([s["clip_text"] for s in got])
    assert emb.dtype == np.float16 and emb.shape[0] == 12
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)
    mean = np.load(out / "clip_text_mean.npy")
    assert np.allclose(mean, emb.astype(np.float32).mean(0), atol=1e-5)
    assert summary["stage3"]["count"] == 12 and read_manifest(out)["meta"]["stage3"]["dim"] == emb.shape[1]


def test_cli_config_errors(tmp_path, config, capsys):
    with pytest.raises(SystemExit) as err:
        run(config, tmp_path / "x", "--generator.init_args.stagee", "captions")
    msg = str(err.value)
    assert msg.startswith("synthloop: config error in ") and "stagee" in msg and "\n" not in msg
    with pytest.raises(SystemExit, match="generator: ValueError: stage must be one of"):
        run(config, tmp_path / "x", "--generator.init_args.stage", "bogus")
    with pytest.raises(SystemExit, match="does not exist"):
        dgcli.main(["unicorn", "--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit, match="unknown kind"):
        dgcli.main(["gift"])
    # shipped configs parse and build (the model/server ones are only built: they need a model / a server)
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "unicorn")
    assert dgcli.main(["unicorn", "--config", os.path.join(root, "datagen_world.yaml"), "--dry_run"]) is None
    assert "dry run ok" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="TransformersBackend is not usable"):  # the placeholder model path
        dgcli.main(["unicorn", "--config", os.path.join(root, "datagen_transformers.yaml"), "--dry_run"])
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(SystemExit, match=f"OpenAIHTTPBackend is not usable: .*{url}"):
        dgcli.main(["unicorn", "--config", os.path.join(root, "datagen_http.yaml"), "--dry_run",
                    "--generator.init_args.backend.init_args.base_url", url])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
