"""Text backends: the world writer (exact answers through the real parser), a tiny local LM through
transformers, and the OpenAI-compatible HTTP client against a real ``transformers serve`` and fakes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests

from datagen.text import (OpenAIHTTPBackend, TransformersBackend, WorldWriter, build_tiny_chat_model,
                          scene_from_dense_caption)
from datagen.unicorn import parse_instructions, validate_caption
from datagen.world import dense_caption, sample_scene, seed_caption

PROMPTS = [[{"role": "system", "content": "you write captions"}, {"role": "user", "content": "a red cube ."}],
           [{"role": "user", "content": "how many spheres are there ?"}]]


# -- world writer -----------------------------------------------------------------------------------

def _match(obj, words):
    vals = {obj.shape, obj.color, obj.size, obj.material}
    return all(w.rstrip("s") in ("object",) or w in vals or w.rstrip("s") in vals for w in words)


def oracle(scene, q):
    """Independent answer to a world question, straight from the scene graph."""
    objs = scene.objects

    def resolve(ref):
        if ref in ("the leftmost object", "the rightmost object"):
            return (min if "left" in ref else max)(objs, key=lambda o: o.x)
        (found,) = [o for o in objs if _match(o, ref.split()[1:])]  # unique by construction
        return found

    if m := re.fullmatch(r"how many (.+) are there\?", q):
        return str(sum(_match(o, m.group(1).split()) for o in objs))
    if m := re.fullmatch(r"what (color|shape) is (.+)\?", q):
        return getattr(resolve(m.group(2)), m.group(1))
    if m := re.fullmatch(r"is there an? (.+)\?", q):
        return "yes" if any(_match(o, m.group(1).split()) for o in objs) else "no"
    m = re.fullmatch(r"is (the .+?) (to the left of|to the right of|in front of|behind) (the .+)\?", q)
    a, b = resolve(m.group(1)), resolve(m.group(3))
    truth = {"to the left of": a.x < b.x, "to the right of": a.x > b.x, "in front of": a.y > b.y,
             "behind": a.y < b.y}[m.group(2)]
    return "yes" if truth else "no"


def test_world_writer_through_the_parser():
    writer = WorldWriter()
    kinds, n_checked = set(), 0
    for k in range(25):
        rng = np.random.default_rng(k)
        scene = sample_scene(rng, (1, 4))
        seed = seed_caption(scene, rng)
        # stage 1: unbound seed -> a scene consistent with the seed; bound -> exactly this scene
        caption = writer.complete([writer.caption_prompt.render(seed=seed)], seed=k)[0]
        assert validate_caption(seed, caption, min_words=5) is None, (seed, caption)
        writer.bind(seed, scene)
        caption = writer.complete([writer.caption_prompt.render(seed=seed)], seed=k)[0]
        assert caption == dense_caption(scene)
        # stage 2 from the caption text alone, checked against the original scene graph
        assert dense_caption(scene_from_dense_caption(caption)) == caption
        text = writer.complete([writer.instruction_prompt.render(caption=caption)], seed=k)[0]
        items, rejects = parse_instructions(text, caption)
        assert not rejects and 1 <= len(items) <= 8
        for item in items:
            kinds.add(item["type"])
            q = item["question"].removesuffix(" Think it through step by step.")
            truth = oracle(scene, q)
            if item["type"] == "mc":
                assert len(set(item["options"])) == 4
                assert item["options"]["ABCD".index(item["answer"])] == truth, item
            elif item["type"] == "open":
                assert item["answer"] == truth, item
            else:
                assert item["answer"].endswith(f"So the answer is {truth}."), item
            n_checked += 1
    assert kinds == {"mc", "open", "reasoning"} and n_checked > 100
    # deterministic, and a prompt it cannot read is a counted failure
    again = WorldWriter().complete([writer.instruction_prompt.render(caption=caption)], seed=24)[0]
    assert again == text
    assert writer.complete([[{"role": "user", "content": "hello"}]]) == [None] and writer.failures == 1


# -- local transformers LM --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny_lm"))


def test_transformers_backend(tiny_lm):
    backend = TransformersBackend(tiny_lm, batch_size=2)
    out = backend.complete(PROMPTS, max_new_tokens=6, temperature=0.8, seed=3)
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    assert backend.complete(PROMPTS, max_new_tokens=6, temperature=0.8, seed=3) == out  # seeded
    greedy = TransformersBackend(tiny_lm, batch_size=1).complete(PROMPTS, max_new_tokens=6, temperature=0.0)
    # left padding: a prompt's greedy output does not depend on its batch mates
    assert backend.complete(PROMPTS, max_new_tokens=6, temperature=0.0) == greedy
    assert backend.failures == 0


# -- HTTP backend -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_lm(tiny_lm, tmp_path_factory):
    exe = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    if not os.path.exists(exe):
        pytest.skip("the `transformers` CLI (transformers serve) is not installed")
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([exe, "serve", tiny_lm, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/v1/models", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer within 60 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url, tiny_lm
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_http_backend_real_server(served_lm):
    url, model = served_lm
    backend = OpenAIHTTPBackend(url, model=model, concurrency=2, timeout=30)
    assert model in backend.check()
    out = backend.complete(PROMPTS, max_new_tokens=5, temperature=0.7, seed=1)
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out), out
    assert backend.failures == 0


def test_http_backend_unreachable_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = OpenAIHTTPBackend(url, model="m", timeout=5)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(f"{url}/v1/models")):
        backend.complete(PROMPTS)
    assert time.monotonic() - t0 < 5


class FakeServer:
    """An OpenAI-lookalike that plays back scripted replies: (status, body) per POST, last one repeated."""

    def __init__(self, script):
        self.script, self.posts = list(script), 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, body):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake"}]}))

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.posts += 1
                self._send(*(fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"  # ".../v1" is accepted too
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


GOOD = (200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "a red cube"}}]}))


@pytest.mark.parametrize("script,expected,retries,failures", [
    ([(200, "<html>oops</html>"), GOOD], "a red cube", 1, 0),
    ([(200, json.dumps({"choices": []})), (503, "busy"), GOOD], "a red cube", 2, 0),
    ([(200, "garbage")], None, 2, 1),
])
def test_http_backend_retries(script, expected, retries, failures):
    server = FakeServer(script)
    try:
        backend = OpenAIHTTPBackend(server.url, model="fake", max_retries=2, backoff=0.01, concurrency=1)
        assert backend.complete(PROMPTS[:1]) == [expected]
        assert (backend.retries, backend.failures, server.posts) == (retries, failures, retries + 1)
    finally:
        server.close()


def test_http_backend_client_error_not_retried():
    server = FakeServer([(400, "bad request")])
    try:
        backend = OpenAIHTTPBackend(server.url, model="fake", max_retries=3, backoff=0.01)
        assert backend.complete(PROMPTS) == [None, None]
        assert backend.failures == 2 and server.posts == 2 and backend.retries == 0
    finally:
        server.close()
