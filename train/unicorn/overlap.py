"""What of an evaluation file a model could have looked up in its training text, and what answer priors score.

For a VQA file (``train.unicorn.vqa_eval`` format) and the text a recipe trained on (the first samples of each
stage's stream, regenerated exactly: sample ``i`` of a stream is ``generator.generate(sample_rng(seed, i), i)``),
:func:`overlap_stats` counts the evaluation records whose caption, whose (question, answer) pair and whose
(caption, question, answer) triple occur in training; :func:`majority_baseline` scores the most frequent
training answer of each question type. A multiple-choice answer is compared as the text of its option.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

LETTERS = "ABCD"
_ATTR = re.compile(r"what (color|colour|shape|size|material)\b")


def question_type(question: str) -> str:
    """``count``, ``color``, ``shape``, ``size``, ``material``, ``exist``, ``relation`` or ``other``."""
    q = question.strip().lower()
    if q.startswith("how many"):
        return "count"
    m = _ATTR.match(q)
    if m:
        return "color" if m.group(1) == "colour" else m.group(1)
    if q.startswith("is there") or q.startswith("are there"):
        return "exist"
    if q.startswith("is ") or q.startswith("are "):
        return "relation"
    return "other"


def answer_text(item: dict[str, Any]) -> str:
    """The answer as words: a letter of a multiple-choice item becomes its option."""
    options = item.get("options") or item.get("choices")
    answer = str(item.get("answer", "")).strip()
    if options and answer in LETTERS[: len(options)]:
        return str(options[LETTERS.index(answer)]).strip().lower()
    return answer.lower()


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


class TrainingText:
    """The captions and question-answer items of training streams (short items only: ``mc`` and ``open``)."""

    def __init__(self) -> None:
        self.captions: set[str] = set()
        self.pairs: set[tuple[str, str]] = set()
        self.triples: set[tuple[str, str, str]] = set()
        self.answers: dict[str, Counter] = defaultdict(Counter)
        self.samples = 0

    def add(self, sample: dict[str, Any]) -> None:
        caption = sample.get("caption")
        if not isinstance(caption, str):
            return
        self.samples += 1
        cap = _norm(caption)
        self.captions.add(cap)
        for item in sample.get("items") or ():
            if item.get("type") not in ("mc", "open"):
                continue
            q, a = _norm(item["question"]), answer_text(item)
            self.pairs.add((q, a))
            self.triples.add((cap, q, a))
            self.answers[question_type(q)][a] += 1

    def add_stream(self, generator, seed: int, n: int) -> "TrainingText":
        """The first ``n`` sample indices of a stream with this ``generator`` and ``seed`` (rejected ones skipped)."""
        from datagen.generator import sample_rng

        for i in range(n):
            sample = generator.generate(sample_rng(seed, i), i)
            if generator.validate(sample) is None:
                self.add(sample)
        return self

    def majority(self) -> dict[str, str]:
        return {t: c.most_common(1)[0][0] for t, c in self.answers.items() if c}


def _records(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def overlap_stats(vqa_path: str | os.PathLike, train: TrainingText) -> dict[str, Any]:
    """Counts (and fractions) of evaluation records whose caption / (q, a) / (caption, q, a) is in training."""
    recs = _records(vqa_path)
    seen = Counter()
    for r in recs:
        cap, q, a = _norm(r.get("caption", "")), _norm(r["question"]), answer_text(r)
        seen["captions"] += cap in train.captions
        seen["qa_pairs"] += (q, a) in train.pairs
        seen["triples"] += (cap, q, a) in train.triples
    n = len(recs)
    return {"n": n, **{k: int(seen[k]) for k in ("captions", "qa_pairs", "triples")},
            "training_samples": train.samples, "training_captions": len(train.captions),
            "fractions": {k: (seen[k] / n if n else 0.0) for k in ("captions", "qa_pairs", "triples")}}


def majority_baseline(vqa_path: str | os.PathLike, train: TrainingText) -> dict[str, Any]:
    """Accuracy of answering every question with its type's most frequent training answer (a multiple-choice
    question: the option equal to that answer, else option A)."""
    majority = train.majority()
    correct: Counter = Counter()
    total: Counter = Counter()
    for r in _records(vqa_path):
        t = question_type(r["question"])
        guess = majority.get(t, "")
        if r.get("choices"):
            opts = [str(o).strip().lower() for o in r["choices"]]
            pick = LETTERS[opts.index(guess)] if guess in opts else "A"
            ok = pick == str(r["answer"]).strip()
        else:
            ok = guess == str(r["answer"]).strip().lower()
        correct[t] += ok
        total[t] += 1
    n = sum(total.values())
    return {"accuracy": sum(correct.values()) / n if n else 0.0, "n": n, "majority": majority,
            "by_qtype": {t: correct[t] / total[t] for t in total}}


def combos_in(texts: Iterable[str], combos) -> int:
    """How many of ``texts`` name a colour-shape combination of ``combos`` (:func:`datagen.world.holdout.mentions`)."""
    from datagen.world.holdout import mentions

    return sum(mentions(t, frozenset(combos)) for t in texts)
