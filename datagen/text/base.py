"""The text-generation interface shared by every backend, and prompt templates from config files.

``TextBackend.complete(prompts, *, max_new_tokens, temperature, seed) -> list[str | None]`` takes
chat conversations (lists of ``{"role", "content"}`` messages) and returns one string per prompt,
or None where the backend gave up (after its retries); the caller drops and counts those.
``failures`` counts the Nones a backend has returned over its life.

Prompt templates (``configs/unicorn/prompts/*.yaml``) hold ``system`` and ``user`` strings with
``{field}`` placeholders. Only ``{identifier}`` is a placeholder, so JSON examples in a template
(``{"type": "mc", ...}``) need no brace escaping, unlike ``str.format``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

Messages = list[dict[str, str]]
_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TextBackend:
    """Interface of text generators (see module docstring)."""

    name = "text"

    def __init__(self) -> None:
        self.failures = 0

    def complete(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                 seed: int = 0) -> list[str | None]:
        raise NotImplementedError

    def complete_with_causes(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                             seed: int = 0) -> list[tuple[str | None, str | None]]:
        """``complete``, with why each None happened: ``(text, None)`` or ``(None, cause)``. Backends that
        know the cause (the HTTP one: ``http:500``, ``http:timeout``, ``json:invalid``, ...) override it; the
        generators record the cause as the dropped sample's reason."""
        outs = self.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return [(o, None if o is not None else f"{self.name}:failed") for o in outs]

    def config(self) -> dict[str, Any]:
        """JSON-able settings that determine the outputs (for logs and cache keys)."""
        return {"backend": self.name}


@dataclass(frozen=True)
class PromptTemplate:
    """A system + user prompt pair with ``{field}`` placeholders."""

    name: str
    system: str
    user: str

    @property
    def fields(self) -> set[str]:
        return set(_FIELD_RE.findall(self.system)) | set(_FIELD_RE.findall(self.user))

    def render(self, **fields: Any) -> Messages:
        """Chat messages with every placeholder filled; a missing field raises ``ValueError``."""
        missing = self.fields - set(fields)
        if missing:
            raise ValueError(f"prompt {self.name!r} needs field(s) {sorted(missing)}")
        sub = lambda text: _FIELD_RE.sub(lambda m: str(fields[m.group(1)]), text)  # noqa: E731
        msgs = [{"role": "system", "content": sub(self.system).strip()}] if self.system.strip() else []
        return msgs + [{"role": "user", "content": sub(self.user).strip()}]

    def match(self, messages: Messages) -> dict[str, str] | None:
        """Inverse of :meth:`render`: the field values when ``messages`` were rendered from this
        template, else None (lets a rule-based backend tell which stage a prompt belongs to)."""
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), None)
        if user is None:
            return None
        parts, names, pos = [], [], 0
        template = self.user.strip()
        for m in _FIELD_RE.finditer(template):
            parts.append(re.escape(template[pos:m.start()]))
            # A repeated field must repeat its value (back-reference), a new one captures lazily.
            parts.append(f"(?P={m.group(1)})" if m.group(1) in names else f"(?P<{m.group(1)}>.*?)")
            names.append(m.group(1))
            pos = m.end()
        parts.append(re.escape(template[pos:]))
        found = re.fullmatch("".join(parts), user, re.DOTALL)
        return found.groupdict() if found else None


def load_prompt(path: str) -> PromptTemplate:
    """A :class:`PromptTemplate` from a YAML file with keys ``user`` (required), ``system``, ``name``."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise ValueError(f"{path}: a prompt file needs a string `user` (and optionally `system`, `name`)")
    unknown = set(data) - {"name", "system", "user", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    return PromptTemplate(name=str(data.get("name", path)), system=str(data.get("system") or ""), user=data["user"])
