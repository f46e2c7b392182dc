"""Hardening of the data side: the HTTP text backend has a deadline per attempt and names the cause of every
drop; a generator that blocks on one sample is dropped and counted (slot and index named) instead of
hanging training; a shard sample without its caption is dropped naming the shard, the key and the field.
The fault-injecting server is a few lines of ``http.server`` on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datagen.stream import GeneratorStream, SampleTimeout, take
from datagen.text import OpenAIHTTPBackend
from models.errors import RunAborted, UserError

PROMPT = [[{"role": "user", "content": "Describe the scene."}]]
GOOD = json.dumps({"choices": [{"message": {"role": "assistant", "content": "a red cube"}}]}).encode()


class FaultServer:
    """OpenAI lookalike whose POST replies follow ``mode``: ok, trickle (a byte per 1.5 s), 500, 400,
    garbage (not JSON), nochoices (JSON, no completion), close (connection closed without a reply)."""

    def __init__(self, mode: str) -> None:
        self.mode, self.posts = mode, 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - /v1/models for the backend's check()
                self._reply(200, json.dumps({"data": [{"id": "fake"}]}).encode())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.posts += 1
                mode = fake.mode
                if mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(GOOD)))
                    self.end_headers()
                    try:
                        for b in GOOD:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(1.5)
                    except OSError:  # the client gave up
                        pass
                    return
                status, body = {"ok": (200, GOOD), "500": (500, b"internal error"), "400": (400, b"bad request"),
                                "garbage": (200, b"<html>oops</html>"),
                                "nochoices": (200, json.dumps({"choices": []}).encode())}[mode]
                self._reply(status, body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,cause,posts", [
    ("trickle", "http:timeout", 2),   # the deadline ends each attempt; retried once
    ("500", "http:500", 2),           # server errors are retried
    ("400", "http:400", 1),           # the request's own fault: not retried
    ("garbage", "json:invalid", 2),
    ("nochoices", "response:invalid", 2),
    ("close", "http:connection", 2),
])
def test_http_failures_are_bounded_and_name_their_cause(mode, cause, posts):
    server = FaultServer(mode)
    try:
        backend = OpenAIHTTPBackend(server.url, model="fake", max_retries=1, backoff=0.01, total_timeout=2, timeout=2)
        assert backend.complete_with_causes(PROMPT) == [(None, cause)]
        assert backend.failures == 1 and backend.causes == {cause: 1} and server.posts == posts
    finally:
        server.close()


def test_http_ok_reply_and_bad_settings():
    server = FaultServer("ok")
    try:
        assert OpenAIHTTPBackend(server.url, model="fake").complete_with_causes(PROMPT) == [("a red cube", None)]
    finally:
        server.close()
    with pytest.raises(UserError, match="total_timeout: must be > 0 seconds"):
        OpenAIHTTPBackend("http://127.0.0.1:1", model="fake", total_timeout=0)


def test_a_backend_failure_is_the_dropped_samples_reason():
    """UnicornText records the backend's cause (``caption:http:500``), not ``caption:empty``."""
    from datagen.unicorn.stages import UnicornText

    server = FaultServer("500")
    try:
        backend = OpenAIHTTPBackend(server.url, model="fake", max_retries=0, total_timeout=2)
        gen = UnicornText(stage="captions", backend=backend)
        import numpy as np

        sample = gen.generate(np.random.default_rng(0), 0)
        assert sample["__reject__"] == "caption:http:500"
    finally:
        server.close()


class Blocking:
    """Sample ``index`` blocks (far longer than the limit) when ``index in hang``; the others are instant."""

    def __init__(self, hang: set[int]) -> None:
        self.hang = hang

    def generate(self, rng, index: int) -> dict:
        if index in self.hang:
            time.sleep(30)
        return {"x": int(rng.integers(1000)), "index": index}


@pytest.mark.timeout(60)
def test_a_generator_blocking_on_one_sample_is_dropped_and_counted(caplog):
    got = take(GeneratorStream(Blocking({2}), seed=1, sample_timeout=0.5), 4)
    assert [s["index"] for s in got] == [0, 1, 3, 4]
    assert got[-1]["__dropped__"] == 1
    assert "SampleTimeout: generate did not return within sample_timeout=0.5 s (slot 0, index 2)" in caplog.text
    # the samples that arrive are those of a run without the limit
    plain = take(GeneratorStream(Blocking(set()), seed=1), 5)
    assert [s["x"] for s in got] == [plain[i]["x"] for i in (0, 1, 3, 4)]


@pytest.mark.timeout(60)
def test_a_generator_that_always_hangs_stops_the_stream():
    with pytest.raises(RunAborted, match="the generator hangs: 8 generate calls are still running"):
        take(GeneratorStream(Blocking(set(range(100))), seed=1, sample_timeout=0.05), 1)
    assert issubclass(SampleTimeout, Exception)


def test_a_shard_sample_without_its_caption_names_shard_key_and_field(tmp_path, caplog):
    import webdataset as wds

    from datagen.shards import ShardStream

    shard = tmp_path / "s-000000.tar"
    with wds.TarWriter(str(shard)) as w:
        w.write({"__key__": "0000000000", "txt": "a red cube", "json": {"i": 0}})
        w.write({"__key__": "0000000001", "json": {"i": 1}})  # no caption
        w.write({"__key__": "0000000002", "txt": "a blue ball", "json": {"i": 2}})

    def needs_txt(sample: dict) -> dict:
        return {"text": sample["txt"]}

    got = take(ShardStream(str(shard), seed=0, transform=needs_txt, epochs=1), 2)
    assert [s["text"] for s in got] == ["a red cube", "a blue ball"] and got[-1]["__dropped__"] == 1
    assert f"shard {shard} key 0000000001: missing field 'txt' (has: json)" in caplog.text
