"""An OpenAI-compatible chat server (vLLM, SGLang, ``transformers serve``, ...) over HTTP.

POST ``{base_url}/v1/chat/completions`` per prompt, from a thread pool of ``concurrency`` workers
(the server batches concurrent requests itself). Every attempt has a deadline: ``connect_timeout`` to
connect, and ``total_timeout`` for the whole attempt, headers and body included (the socket timeout is
re-armed with the time left before every read, so a server that trickles one byte at a time cannot
hold a worker longer; ``timeout`` bounds a single silent read). An attempt is retried with exponential
back-off, ``backoff · 2^attempt`` seconds, on timeouts, connection errors, 429/5xx and garbage (a body
that is not JSON or has no ``choices[0].message.content`` string); other 4xx are the request's fault and
are not retried. After ``max_retries`` retries the prompt yields None (counted in ``failures``) and
:meth:`complete_with_causes` says why, as the dropped sample's reason:

    http:<status>    the server answered with that status (``http:500``, ``http:429``, ``http:400``)
    http:timeout     no complete reply within the deadline
    http:connection  connection refused, reset or closed mid-reply
    json:invalid     the body is not JSON
    response:invalid JSON without ``choices[0].message.content`` as a string

``check()`` (run once before the first call) turns an unreachable server into a ``ConnectionError``
naming the URL instead of ``len(prompts) × retries`` slow failures.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from .base import Messages, TextBackend

log = logging.getLogger(__name__)


class _Failed(Exception):
    """One failed attempt; ``cause`` is the short reason (module docstring), ``retry`` whether to retry."""

    def __init__(self, cause: str, detail: str, retry: bool = True) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause, self.retry = cause, retry


def _arm(response: requests.Response, seconds: float) -> None:
    """Set the socket timeout of a streamed response's connection to ``seconds`` (best effort)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None) or \
        getattr(getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


class OpenAIHTTPBackend(TextBackend):
    """``complete`` through an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``seed`` is sent as ``seed + i`` for prompt ``i`` (so prompts of one call do not share samples);
    ``retries`` counts retried requests, ``failures`` the prompts given up on.
    """

    name = "openai_http"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 60, max_retries: int = 3, backoff: float = 0.5, total_timeout: float = 300,
                 connect_timeout: float = 10) -> None:
        super().__init__()
        from models.errors import UserError

        for key, value in (("timeout", timeout), ("total_timeout", total_timeout), ("connect_timeout", connect_timeout)):
            if not float(value) > 0:
                raise UserError(f"{type(self).__name__}.{key}: must be > 0 seconds, got {value!r}")
        if int(max_retries) < 0 or float(backoff) < 0:
            raise UserError(f"{type(self).__name__}: max_retries and backoff must be >= 0, got {max_retries!r}, "
                            f"{backoff!r}")
        # Accept ".../v1" too: people copy the OpenAI client's base_url, which includes it.
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model, self.api_key = model, api_key
        self.concurrency, self.timeout = max(1, int(concurrency)), float(timeout)
        self.total_timeout, self.connect_timeout = float(total_timeout), float(connect_timeout)
        self.max_retries, self.backoff = int(max_retries), float(backoff)
        self.causes: dict[str, int] = {}  # cause -> prompts given up on with it
        self.retries = 0
        self._checked = False
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def check(self) -> list[str]:
        """GET ``/v1/models``; the served model ids. Unreachable or not answering -> ``ConnectionError``."""
        url = f"{self.base_url}/v1/models"
        try:
            r = requests.get(url, headers=self._headers(), timeout=min(self.timeout, 10.0))
            r.raise_for_status()
            ids = [m.get("id") for m in r.json().get("data", [])]
        except (requests.RequestException, ValueError, AttributeError) as exc:
            raise ConnectionError(f"OpenAI-compatible server at {url} is not reachable or not answering: "
                                  f"{exc}") from exc
        if ids and self.model not in ids:  # some servers list only part of what they serve: warn only
            log.warning("model %r is not among the models listed by %s: %s", self.model, url, ids)
        self._checked = True
        return ids

    def _attempt(self, url: str, body: dict[str, Any]) -> str:
        """One POST within the deadline; the completion's text, or :class:`_Failed`."""
        deadline = time.monotonic() + self.total_timeout
        read = min(self.timeout, self.total_timeout)
        try:
            r = requests.post(url, json=body, headers=self._headers(), timeout=(self.connect_timeout, read), stream=True)
        except requests.Timeout as exc:
            raise _Failed("http:timeout", str(exc)) from exc
        except requests.RequestException as exc:
            raise _Failed("http:connection", str(exc)) from exc
        try:
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Failed("http:timeout", f"no complete reply within total_timeout={self.total_timeout:g} s")
                _arm(r, min(read, left))
                try:
                    chunk = r.raw.read1(65536, decode_content=True)
                except (OSError, requests.RequestException, Exception) as exc:  # noqa: BLE001 - urllib3 wraps socket errors
                    timed_out = "timed out" in str(exc).lower() or isinstance(exc, TimeoutError)
                    raise _Failed("http:timeout" if timed_out else "http:connection", str(exc)) from exc
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            r.close()
        text = b"".join(chunks).decode("utf-8", errors="replace")
        if r.status_code == 429 or r.status_code >= 500:
            raise _Failed(f"http:{r.status_code}", text[:120])
        if r.status_code >= 400:  # the request itself is wrong: retrying cannot help
            log.warning("%s rejected the request: HTTP %d %s", url, r.status_code, text[:200])
            raise _Failed(f"http:{r.status_code}", text[:120], retry=False)
        try:
            reply = json.loads(text)
        except ValueError as exc:
            raise _Failed("json:invalid", f"{text[:80]!r}") from exc
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Failed("response:invalid", f"not a chat completion: {text[:80]!r}") from exc
        if not isinstance(content, str):
            raise _Failed("response:invalid", f"content is {type(content).__name__}")
        return content

    def _request(self, messages: Messages, max_new_tokens: int, temperature: float,
                 seed: int) -> tuple[str | None, str | None]:
        url = f"{self.base_url}/v1/chat/completions"
        body = {"model": self.model, "messages": messages, "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "seed": int(seed), "stream": False}
        cause = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._attempt(url, body), None
            except _Failed as exc:
                cause = exc.cause
                log.info("request to %s failed (attempt %d/%d): %s", url, attempt + 1, self.max_retries + 1, exc)
                if not exc.retry:
                    break
        with self._lock:
            self.failures += 1
            self.causes[cause] = self.causes.get(cause, 0) + 1
        return None, cause

    def complete_with_causes(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                             seed: int = 0) -> list[tuple[str | None, str | None]]:
        if not self._checked:
            self.check()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(prompts)))) as pool:
            futures = [pool.submit(self._request, m, max_new_tokens, temperature, seed + i)
                       for i, m in enumerate(prompts)]
            return [f.result() for f in futures]

    def complete(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                 seed: int = 0) -> list[str | None]:
        return [text for text, _ in self.complete_with_causes(prompts, max_new_tokens=max_new_tokens,
                                                               temperature=temperature, seed=seed)]
