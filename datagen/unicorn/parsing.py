"""Defensive parsing and validation of LLM outputs for Unicorn stages 1 and 2.

LLM outputs fail in predictable ways: prose around the JSON, code fences, truncation at the token
limit, refusals, missing/empty fields, wrong option counts, answer letters outside A–D, repeated
questions. Every rejection is *counted by reason* (a ``collections.Counter``) so a data run can
report its yield instead of silently shrinking.

Reject reasons of :func:`parse_instructions` (whole output: counted once; per item: once per item)::

    not_json, truncated_json, refusal, not_a_list, bad_item, unknown_type, missing_field,
    empty_field, mc_options, answer_letter, answer_not_letter, mentions_caption, copies_caption,
    duplicate

Reasons of :func:`validate_caption`: ``empty, refusal, copy_of_seed, too_short, missing_object``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

REFUSAL_RE = re.compile(
    r"\b(i['’]?m sorry|i am sorry|i apologi[sz]e|as an ai\b|as a language model|"
    r"i (?:cannot|can['’]?t|can not|am unable to|['’]?m unable to|won['’]?t be able to))", re.IGNORECASE)
_FENCE_RE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_OPEN, _CLOSE = "[{", "]}"
LETTERS = "ABCD"
TYPE_ALIASES = {
    "mc": "mc", "multiple_choice": "mc", "multiple-choice": "mc", "multiple choice": "mc", "multichoice": "mc",
    "open": "open", "open_qa": "open", "open qa": "open", "qa": "open", "open_question": "open",
    "reasoning": "reasoning", "complex_reasoning": "reasoning", "complex reasoning": "reasoning",
}
# Text-only pitfall: questions about "the caption" make no sense once the VLM sees an image instead.
_CAPTION_REF_RE = re.compile(r"\b(the|this|given) (caption|description|text|passage)\b", re.IGNORECASE)


class PayloadError(ValueError):
    """No JSON payload could be read; ``reason`` is ``"not_json"`` or ``"truncated_json"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_refusal(text: str) -> bool:
    return bool(REFUSAL_RE.search(text or ""))


def _json_chars(text: str, start: int = 0):
    """Yield ``(index, char, inside_string)`` over ``text`` with backslash escapes honoured: one scanner
    for every JSON walk here. An opening quote counts as outside its string, the closing one as inside."""
    in_str, esc = False, False
    for k in range(start, len(text)):
        ch = text[k]
        yield k, ch, in_str
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket closing ``text[start]``, or None when the text ends first.

    String-aware (brackets inside "..." do not count, backslash escapes are honoured), so a question
    like "what is in [the box]?" inside a JSON string does not confuse the scan.
    """
    stack = []
    for k, ch, in_str in _json_chars(text, start):
        if in_str or ch == '"':
            continue
        if ch in _OPEN:
            stack.append(_CLOSE[_OPEN.index(ch)])
        elif ch in _CLOSE:
            if ch != stack.pop() or not stack:
                return k + 1  # closed (or a mismatched closer: the span ends here and json.loads rejects it)
    return None


def _drop_trailing_commas(s: str) -> str:
    """Remove commas directly before ``]`` or ``}`` outside strings (``[1, 2,]`` -> ``[1, 2]``)."""
    out, pending = [], None
    for _, ch, in_str in _json_chars(s):
        if in_str:
            out.append(ch)
            continue
        if pending is not None:  # a comma seen outside strings, waiting for the next non-space char
            if ch.isspace():
                pending += ch
                continue
            out.append(pending[1:] if ch in _CLOSE else pending)  # drop the comma only before a closer
            pending = None
        if ch == ",":
            pending = ","
            continue
        out.append(ch)
        in_str = ch == '"'
    if pending is not None:
        out.append(pending)
    return "".join(out)


def parse_json_payload(text: str | None) -> Any:
    """The first JSON array/object in an LLM answer, tolerant of what chat models wrap around it.

    1. the inside of the first fenced block (```json ... ```) when there is one (an unclosed fence
       runs to the end: a truncated answer stays truncated);
    2. the whole text, if it parses as JSON;
    3. otherwise scan left to right: for each ``[`` or ``{``, find its balanced closing bracket
       (string-aware) and parse that span; a span that does not parse is skipped whole (prose such as
       "[see below]"). A first bracket that is never closed means the answer was cut off.

    Trailing commas (``[1, 2,]``) are tolerated: chat models write them often and the meaning is
    unambiguous. Nothing else is repaired (single quotes, comments, unquoted keys stay errors).
    Raises :class:`PayloadError` with ``reason`` ``"truncated_json"`` or ``"not_json"``.
    """
    if text is None or not text.strip():
        raise PayloadError("not_json", "empty output")
    fence = _FENCE_RE.search(text)
    body = fence.group(1) if fence else text
    for candidate in (body.strip(), _drop_trailing_commas(body.strip())):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    pos = 0
    while True:
        starts = [k for k in (body.find("[", pos), body.find("{", pos)) if k >= 0]
        if not starts:
            raise PayloadError("not_json", f"no JSON array/object in output: {text[:80]!r}")
        start = min(starts)
        end = _balanced_end(body, start)
        if end is None:
            raise PayloadError("truncated_json", f"JSON starting at char {start} is never closed")
        span = body[start:end]
        for candidate in (span, _drop_trailing_commas(span)):
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                pass
        pos = end


def normalise_text(text: str) -> str:
    """Lower case, every run of non-alphanumerics -> one space, stripped (what dedup compares)."""
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


class Dedup:
    """Exact and near-duplicate detection over normalised text.

    * exact: blake2b hash of :func:`normalise_text` in a set (O(1));
    * near: character ``k``-shingles ``S(x)`` (all length-k substrings of the normalised text) and
      Jaccard ``|S(a) ∩ S(b)| / |S(a) ∪ S(b)| >= threshold`` against every kept text (a linear
      scan: fine for per-caption question sets and small corpora; use MinHash/LSH for millions).

    ``threshold=None`` disables the near-duplicate check. Near-duplicate matching suits long texts
    (captions); on short templated questions it confuses "A behind B?" with "B behind A?".
    """

    def __init__(self, threshold: float | None = 0.85, k: int = 5) -> None:
        self.threshold, self.k = threshold, int(k)
        self._hashes: set[bytes] = set()
        self._shingles: list[frozenset[str]] = []

    def _shingle(self, norm: str) -> frozenset[str]:
        return frozenset(norm[i:i + self.k] for i in range(max(1, len(norm) - self.k + 1)))

    def check(self, text: str) -> str | None:
        """``"duplicate"`` when ``text`` (nearly) repeats a kept text, else None; keeps nothing."""
        norm = normalise_text(text)
        if hashlib.blake2b(norm.encode(), digest_size=16).digest() in self._hashes:
            return "duplicate"
        if self.threshold is not None:
            sh = self._shingle(norm)
            for other in self._shingles:
                if len(sh & other) >= self.threshold * len(sh | other):
                    return "duplicate"
        return None

    def add(self, text: str) -> None:
        norm = normalise_text(text)
        self._hashes.add(hashlib.blake2b(norm.encode(), digest_size=16).digest())
        if self.threshold is not None:
            self._shingles.append(self._shingle(norm))

    def check_and_add(self, text: str) -> str | None:
        """:meth:`check`, and keep ``text`` when it is new."""
        reason = self.check(text)
        if reason is None:
            self.add(text)
        return reason

    def __len__(self) -> int:
        return len(self._hashes)


def clean_caption(text: str | None) -> str:
    """Strip what chat models put around a caption: code fences, a "Caption:" label, quotes."""
    text = (text or "").strip()
    fence = _FENCE_RE.search(text)
    if fence:
        text = fence.group(1).strip()
    text = re.sub(r"^(detailed |dense |expanded )?caption\s*:\s*", "", text, flags=re.IGNORECASE)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def seed_objects(seed: str, nouns: Iterable[str] | None = None) -> list[str]:
    """Main object nouns of a seed: the world's shape nouns (or ``nouns``) it mentions, singular."""
    if nouns is None:
        from datagen.world import SHAPES
        nouns = SHAPES
    words = set(normalise_text(seed).split())
    return [n for n in nouns if n in words or n + "s" in words]


def validate_caption(seed: str, caption: str | None, *, min_words: int = 8,
                     main_objects: Iterable[str] | None = None) -> str | None:
    """Reason to reject a stage-1 caption, or None.

    ``empty``; ``refusal``; ``copy_of_seed`` (no expansion); ``too_short`` (< ``min_words`` words);
    ``missing_object`` (a main object of the seed -- ``main_objects`` or the shape nouns of the seed,
    see :func:`seed_objects` -- appears neither singular nor plural).
    """
    if caption is None or not caption.strip():
        return "empty"
    if is_refusal(caption):
        return "refusal"
    norm = normalise_text(caption)
    if norm == normalise_text(seed):
        return "copy_of_seed"
    words = norm.split()
    if len(words) < min_words:
        return "too_short"
    objects = seed_objects(seed) if main_objects is None else list(main_objects)
    present = set(words)
    for obj in objects:
        o = normalise_text(obj)
        if " " in o:  # multi-word object names: substring match on the normalised caption
            if o not in norm:
                return "missing_object"
        elif o not in present and o + "s" not in present and o + "es" not in present:
            return "missing_object"
    return None


def _letter(answer: Any) -> str | None:
    """"B", "b", "(B)", "B." -> "B"; anything that is not a single letter -> None."""
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.):]?\s*", str(answer))
    return m.group(1).upper() if m else None


def _options(raw: Any) -> list[str] | None:
    """Options as a list of strings: a list, or a dict keyed A, B, ... ("A. red" prefixes removed)."""
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw, key=str)]
    if not isinstance(raw, list) or not all(isinstance(o, (str, int, float)) for o in raw):
        return None
    return [re.sub(r"^\s*\(?[A-Da-d][.):]\s+", "", str(o)).strip() for o in raw]


def _check_item(raw: Any) -> tuple[dict | None, str | None]:
    if not isinstance(raw, dict):
        return None, "bad_item"
    kind = TYPE_ALIASES.get(str(raw.get("type", "")).strip().lower())
    if kind is None:
        return None, "missing_field" if "type" not in raw else "unknown_type"
    fields = ("question", "answer") + (("options",) if kind == "mc" else ())
    if any(f not in raw or raw[f] is None for f in fields):
        return None, "missing_field"
    question, answer = str(raw["question"]).strip(), raw["answer"]
    if not question or not str(answer).strip():
        return None, "empty_field"
    if is_refusal(question) or is_refusal(str(answer)):
        return None, "refusal"
    if _CAPTION_REF_RE.search(question) or _CAPTION_REF_RE.search(str(answer)):
        return None, "mentions_caption"
    item = {"type": kind, "question": question, "answer": str(answer).strip()}
    if kind == "mc":
        opts = _options(raw["options"])
        if opts is None or len(opts) != 4 or any(not o for o in opts) or len({normalise_text(o) for o in opts}) != 4:
            return None, "mc_options"  # not 4 distinct non-empty options: no well-posed single answer
        letter = _letter(answer)
        if letter is None:
            return None, "answer_not_letter"
        if letter not in LETTERS:
            return None, "answer_letter"
        item.update(answer=letter, options=opts)
    return item, None


def parse_instructions(text: str | None, caption: str, *, dedup: Dedup | None = None
                       ) -> tuple[list[dict], Counter]:
    """Stage-2 items from an LLM answer: ``(items, rejects)``.

    Each kept item is ``{"type": "mc"|"open"|"reasoning", "question", "answer", "options"?}``; an mc
    answer is normalised to one capital letter A–D and its options to 4 strings. The payload may be a
    list of items or an object holding one list (``{"items": [...]}``). Items that name "the
    caption"/"the description" are rejected (``mentions_caption``): the trained VLM is asked about an
    image, not a text. ``caption`` is the stage-1 caption the items were written from (an answer that
    merely copies it is rejected: ``copies_caption``). ``dedup`` rejects repeated questions: pass one
    to share it across calls (corpus-level); by default a fresh exact-match one per call.
    """
    rejects: Counter = Counter()
    # Exact (normalised) matching by default: short questions that swap two objects ("is the red cube
    # behind the blue sphere?" / "is the blue sphere behind the red cube?") are near-identical by
    # characters yet ask different things; near-duplicate matching is for long texts such as captions.
    dedup = Dedup(threshold=None) if dedup is None else dedup
    try:
        payload = parse_json_payload(text)
    except PayloadError as err:
        rejects["refusal" if is_refusal(text or "") else err.reason] += 1
        return [], rejects
    if isinstance(payload, dict):
        lists = [v for v in payload.values() if isinstance(v, list)]
        payload = lists[0] if len(lists) == 1 else ([payload] if "question" in payload else None)
    if not isinstance(payload, list):
        rejects["not_a_list"] += 1
        return [], rejects
    items = []
    for raw in payload:
        item, reason = _check_item(raw)
        if reason is None and normalise_text(item["answer"]) == normalise_text(caption):
            reason = "copies_caption"  # the whole caption as an answer teaches nothing about the image
        if reason is None:
            reason = dedup.check_and_add(item["question"])
        if reason is not None:
            rejects[reason] += 1
        else:
            items.append(item)
    return items, rejects
