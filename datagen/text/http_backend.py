"""An OpenAI-compatible chat server (vLLM, SGLang, ``transformers serve``, ...) over HTTP.

POST ``{base_url}/v1/chat/completions`` per prompt, from a thread pool of ``concurrency`` workers
(the server batches concurrent requests itself). A request is retried with exponential back-off,
``backoff · 2^attempt`` seconds, on timeouts, connection errors, 429/5xx and garbage (a body that is
not JSON or has no ``choices[0].message.content`` string); other 4xx are the request's fault and are
not retried. After ``max_retries`` retries the prompt yields None (counted in ``failures``).
``check()`` (run once before the first call) turns an unreachable server into a ``ConnectionError``
naming the URL instead of ``len(prompts) × retries`` slow failures.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from .base import Messages, TextBackend

log = logging.getLogger(__name__)


class _Garbage(Exception):
    """A reply that parsed as HTTP but not as a chat completion."""


class OpenAIHTTPBackend(TextBackend):
    """``complete`` through an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``seed`` is sent as ``seed + i`` for prompt ``i`` (so prompts of one call do not share samples);
    ``retries`` counts retried requests, ``failures`` the prompts given up on.
    """

    name = "openai_http"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 60, max_retries: int = 3, backoff: float = 0.5) -> None:
        super().__init__()
        # Accept ".../v1" too: people copy the OpenAI client's base_url, which includes it.
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model, self.api_key = model, api_key
        self.concurrency, self.timeout = max(1, int(concurrency)), float(timeout)
        self.max_retries, self.backoff = int(max_retries), float(backoff)
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

    def _request(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int) -> str | None:
        url = f"{self.base_url}/v1/chat/completions"
        body = {"model": self.model, "messages": messages, "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "seed": int(seed), "stream": False}
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = requests.post(url, json=body, headers=self._headers(), timeout=self.timeout)
                if r.status_code == 429 or r.status_code >= 500:
                    raise _Garbage(f"HTTP {r.status_code}")
                if r.status_code >= 400:  # the request itself is wrong: retrying cannot help
                    log.warning("%s rejected the request: HTTP %d %s", url, r.status_code, r.text[:200])
                    break
                try:
                    content = r.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise _Garbage(f"not a chat completion: {r.text[:80]!r}") from exc
                if not isinstance(content, str):
                    raise _Garbage(f"content is {type(content).__name__}")
                return content
            except (requests.Timeout, requests.ConnectionError, _Garbage) as exc:
                log.info("request to %s failed (attempt %d/%d): %s", url, attempt + 1, self.max_retries + 1, exc)
        with self._lock:
            self.failures += 1
        return None

    def complete(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                 seed: int = 0) -> list[str | None]:
        if not self._checked:
            self.check()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(prompts)))) as pool:
            futures = [pool.submit(self._request, m, max_new_tokens, temperature, seed + i)
                       for i, m in enumerate(prompts)]
            return [f.result() for f in futures]
