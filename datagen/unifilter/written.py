"""UniFilter training pairs for real corpora: a text backend writes each caption's versions at levels 0..3.

The scene world labels its levels exactly (:mod:`datagen.unifilter.levels`); a real corpus has images and
captions only. :class:`WrittenLevels` asks any :class:`datagen.text.TextBackend` (a local transformers model,
an OpenAI-compatible server, as in Unicorn) to rewrite a caption at a level, with one prompt per level
(``configs/unifilter/prompts/levels.yaml`` and :data:`LEVEL_INSTRUCTIONS`):

=====  =====================================================================
3      accurate and detailed: rewrite keeping every fact
2      exactly one attribute of one object wrong (colour, count, size, material, position)
1      several obvious errors
0      a caption of an unrelated image
=====  =====================================================================

A bad output is rejected with a reason, and the stream drops and counts the sample (``drops`` in the logs):
the backend's own cause (``http:500``, ``http:timeout``, ...), ``written:empty``, ``written:refusal``,
``written:too_short``, ``written:unchanged`` (levels 0-2 that repeat the caption), ``written:not_unrelated``
(a level-0 text sharing most of its words with the caption); an unreadable image is ``image:unreadable``.

The source is a JSONL file of ``{"image": path, "caption": text}`` records (paths relative to the file).
Records are split by position (``j % 10``: 0-7 train, 8 val, 9 test), so validation and test images are never
trained on. Sample ``index`` takes record ``index // 4`` of its split (modulo its size) at level
``index % 4``: each record's four levels are consecutive and every level is equally frequent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from datagen.generator import SampleGenerator
from datagen.text.base import PromptTemplate, TextBackend, load_prompt

PROMPT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "unifilter", "prompts", "levels.yaml")
LEVEL_INSTRUCTIONS = {
    3: "Rewrite it as one accurate, detailed caption. Keep every fact it states; add nothing that is not in it.",
    2: "Rewrite it with exactly one error: change one attribute of one object (its colour, number, size, "
       "material or position) and keep everything else exactly as it is.",
    1: "Rewrite it with several obvious errors: change the number of objects and at least two attributes.",
    0: "Ignore it and write a plausible caption of a completely different, unrelated image.",
}
SPLIT_OF = {**{r: "train" for r in range(8)}, 8: "val", 9: "test"}


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""}


class WrittenLevels(SampleGenerator):
    """Image-caption pairs of a real corpus at levels 0..3, written by a text backend (module docstring).

    Args:
        source: a JSONL file, one ``{"image": path, "caption": text}`` per line.
        backend: the :class:`TextBackend` that writes the levels.
        split: ``"train"``, ``"val"`` or ``"test"`` (records ``j % 10`` in 0-7, 8, 9).
        prompt: a prompt file with ``{caption}`` and ``{instruction}`` (default: the shipped one).
        level_instructions: replaces some of :data:`LEVEL_INSTRUCTIONS` (keys 0..3).
        min_words: a written caption shorter than this is rejected (``written:too_short``).
        max_overlap: a level-0 caption sharing more than this fraction of its words with the source is
            rejected (``written:not_unrelated``).
        max_new_tokens, temperature: generation settings.
    """

    def __init__(self, source: str, backend: TextBackend, split: str = "train", prompt: str | None = None,
                 level_instructions: dict[int, str] | None = None, min_words: int = 3, max_overlap: float = 0.5,
                 max_new_tokens: int = 128, temperature: float = 0.7) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"WrittenLevels.split: must be 'train', 'val' or 'test', got {split!r}")
        self.source, self.backend, self.split = str(source), backend, split
        self.prompt: PromptTemplate = load_prompt(prompt or PROMPT)
        if not {"caption", "instruction"} <= self.prompt.fields:
            raise ValueError(f"WrittenLevels.prompt: {prompt or PROMPT} needs {{caption}} and {{instruction}}")
        self.instructions = {**LEVEL_INSTRUCTIONS, **{int(k): str(v) for k, v in (level_instructions or {}).items()}}
        self.min_words, self.max_overlap = int(min_words), float(max_overlap)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self._records: dict[str, list[dict[str, Any]]] | None = None

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """The source's records per split (read once; a bad line is a one-line error naming file and line)."""
        if self._records is None:
            path = Path(self.source)
            if not path.is_file():
                raise FileNotFoundError(f"WrittenLevels.source: {path} does not exist (a JSONL of "
                                        f'{{"image": path, "caption": text}} records)')
            out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for j, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{j + 1}: not JSON ({exc.msg}); one object per line") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or \
                        not isinstance(rec.get("caption"), str) or not rec["caption"].strip():
                    raise ValueError(f"{path}:{j + 1}: needs string fields 'image' and 'caption' (non-empty)")
                out[SPLIT_OF[j % 10]].append({**rec, "image": str(path.parent / rec["image"]), "line": j + 1})
            if not out[self.split]:
                raise ValueError(f"WrittenLevels.source: {path} has no {self.split!r} records "
                                 f"(lines j with j % 10 in {sorted(k for k, v in SPLIT_OF.items() if v == self.split)})")
            self._records = out
        return self._records

    def config(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "backend": self.backend.config(),
                "prompt": self.prompt.user, "instructions": self.instructions, "min_words": self.min_words,
                "max_overlap": self.max_overlap, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        from PIL import Image

        from datagen.unicorn.parsing import clean_caption, is_refusal

        recs = self.records()[self.split]
        rec, level = recs[(index // 4) % len(recs)], index % 4
        meta = {"source_line": rec["line"], "source_caption": rec["caption"], "level": level, "split": self.split,
                "kind": "written", "index": int(index)}
        sample: dict[str, Any] = {"score": level, "json": meta}
        try:
            with Image.open(rec["image"]) as im:
                sample["image"] = im.convert("RGB")
        except (OSError, ValueError):
            sample["__reject__"] = "image:unreadable"
            return sample
        messages = self.prompt.render(caption=rec["caption"], instruction=self.instructions[level])
        (raw, cause), = self.backend.complete_with_causes([messages], max_new_tokens=self.max_new_tokens,
                                                          temperature=self.temperature, seed=int(index))
        if raw is None:
            sample["__reject__"] = cause or f"{self.backend.name}:failed"
            return sample
        text = clean_caption(raw)
        reason = None
        if not text:
            reason = "written:empty"
        elif is_refusal(text):
            reason = "written:refusal"
        elif len(text.split()) < self.min_words:
            reason = "written:too_short"
        elif level < 3 and " ".join(text.lower().split()) == " ".join(rec["caption"].lower().split()):
            reason = "written:unchanged"
        elif level == 0:
            src, new = _words(rec["caption"]), _words(text)
            if new and len(src & new) / len(new) > self.max_overlap:
                reason = "written:not_unrelated"
        if reason is not None:
            sample["__reject__"] = reason
            return sample
        sample["txt"] = text
        return sample

    def validate(self, sample: dict) -> str | None:
        return sample.get("__reject__")
