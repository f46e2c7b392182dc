"""UniFilter levels written by a text backend for a real corpus (issue 21, item 1's backend path):
``datagen.unifilter.WrittenLevels`` with a scripted backend and with the real ``OpenAIHTTPBackend`` against a
fault-injecting server; bad outputs are rejected with a reason, dropped and counted by the stream."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from datagen.generator import sample_rng
from datagen.stream import GeneratorStream
from datagen.text.base import TextBackend
from datagen.text.http_backend import OpenAIHTTPBackend
from datagen.unifilter import LEVEL_INSTRUCTIONS, WrittenLevels
from datagen.world import dense_caption, render_scene, sample_scene
from tests.test_text_backends import FakeServer


def _corpus(tmp_path, n=20, broken=()):
    rng = np.random.default_rng(0)
    lines = []
    for j in range(n):
        scene = sample_scene(rng, (1, 2))
        name = f"img{j}.png"
        if j in broken:
            (tmp_path / name).write_bytes(b"not a png")
        else:
            render_scene(scene, 32, rng).save(tmp_path / name)
        lines.append(json.dumps({"image": name, "caption": dense_caption(scene)}))
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class Scripted(TextBackend):
    """Answers by level (read from the instruction in the prompt); ``bad`` maps a seed (= index) to a reply."""

    name = "scripted"

    def __init__(self, bad=None):
        super().__init__()
        self.bad = dict(bad or {})

    def complete_with_causes(self, prompts, *, max_new_tokens=512, temperature=0.7, seed=0):
        if seed in self.bad:
            reply = self.bad[seed]
            return [reply if isinstance(reply, tuple) else (reply, None)]
        user = prompts[0][-1]["content"]
        level = next(k for k, v in LEVEL_INSTRUCTIONS.items() if v in user)
        caption = user.split("Caption: ", 1)[1].split("\n", 1)[0]
        text = {3: caption + " The scene is evenly lit.", 2: caption.replace("small", "huge", 1) + " (one change)",
                1: "there are nine objects, all of them pink and made of glass", 0: "a dog runs along a sunny beach"}
        return [(text[level], None)]


def test_levels_are_written_per_record_and_bad_outputs_rejected_with_a_reason(tmp_path):
    src = _corpus(tmp_path, broken=(2,))  # record 2 is a train record with a damaged image
    bad = {4: "", 5: "I'm sorry, but I can't help with that.", 6: ("x", None), 13: (None, "http:500")}
    gen = WrittenLevels(str(src), Scripted(bad))
    recs = gen.records()
    assert [len(recs[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    out = [gen.generate(sample_rng(0, i), i) for i in range(16)]
    reasons = {i: gen.validate(s) for i, s in enumerate(out)}
    assert reasons[4] == "written:empty" and reasons[5] == "written:refusal" and reasons[6] == "written:too_short"
    assert reasons[13] == "http:500"  # the backend's own cause
    assert reasons[8] == reasons[10] == reasons[11] == "image:unreadable"  # record 2 (indices 8..11)
    ok = [s for i, s in enumerate(out) if reasons[i] is None]
    assert {s["score"] for s in ok} == {0, 1, 2, 3}
    s3 = out[3]
    assert s3["score"] == 3 and s3["txt"].startswith(s3["json"]["source_caption"]) and s3["image"].size == (32, 32)
    # a level-0 text that repeats the caption's words, and a level-2 text equal to it, are rejected too
    cap = recs["train"][0]["caption"]
    gen2 = WrittenLevels(str(src), Scripted({0: cap + " again", 2: cap.upper()}))
    assert gen2.validate(gen2.generate(sample_rng(0, 0), 0)) == "written:not_unrelated"
    assert gen2.validate(gen2.generate(sample_rng(0, 2), 2)) == "written:unchanged"
    # the stream drops and counts them
    stream = iter(GeneratorStream(gen, seed=0, validate=gen.validate))
    kept = [next(stream) for _ in range(8)]
    assert kept[-1]["__dropped__"] == 8 and all("txt" in s for s in kept)


def test_validation_and_test_records_are_never_training_records(tmp_path):
    src = _corpus(tmp_path)
    seen = {split: {WrittenLevels(str(src), Scripted(), split=split).generate(sample_rng(0, i), i)["json"]["source_line"]
                    for i in range(40)} for split in ("train", "val", "test")}
    assert seen["val"] == {9, 19} and seen["test"] == {10, 20} and not seen["train"] & (seen["val"] | seen["test"])


def test_a_bad_source_line_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "a red cube"}\n{"image": "b.png"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: needs string fields 'image' and 'caption'"):
        WrittenLevels(str(path), Scripted()).records()


def test_through_the_openai_compatible_backend_with_server_faults(tmp_path):
    src = _corpus(tmp_path, n=10)

    def reply(text):
        return 200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

    server = FakeServer([reply('"a cat sleeps on a warm windowsill"'), (500, "boom"), (500, "boom"), (500, "boom"),
                         (400, "bad request")])
    try:
        backend = OpenAIHTTPBackend(server.url, model="fake", max_retries=2, backoff=0.01, concurrency=1)
        gen = WrittenLevels(str(src), backend)
        first = gen.generate(sample_rng(0, 0), 0)  # level 0, the quoted reply unwrapped
        assert gen.validate(first) is None and first["txt"] == "a cat sleeps on a warm windowsill"
        second = gen.generate(sample_rng(0, 1), 1)  # three 500s: retried twice, then given up with its cause
        assert gen.validate(second).startswith("http:5")
        third = gen.generate(sample_rng(0, 2), 2)  # a client error: not retried
        assert gen.validate(third).startswith("http:4")
        assert Counter(gen.validate(s) is None for s in (first, second, third)) == Counter({True: 1, False: 2})
    finally:
        server.close()
