"""Unicorn stages 1 and 2 as an online sample generator (the DataModule's source, or a shard export's).

One sample = one seed caption taken through the stages:

* **seed** -- a sparse caption of a random world scene (``seed_caption``), or a line of a local
  seed file (``seeds: path/to/seeds.txt``, one caption per line: the real-scale case);
* **stage 1** -- the backend expands it with the ``caption_expansion`` prompt; the output is cleaned
  and validated (:func:`validate_caption`: empty, refusal, copy of the seed, too short, a main
  object of the seed missing) -- a rejected caption drops the sample with that reason;
* **stage 2** (``stage="instructions"``) -- the backend writes JSON items from the caption with the
  ``instructions`` prompt; :func:`parse_instructions` keeps the valid ones and counts the rejected
  ones by reason (``rejects`` in the sample); a caption with no valid item drops the sample.

Stage 3 (text embedding -> synthetic image embedding) needs the CLIP text tower and runs on the
training side (``train.unicorn.module``), batched on the accelerator.

With the scene world's writer as backend (the offline default), the seed's scene is bound to the
writer so stage 1 describes exactly that scene, and ``render_size`` adds the rendered ``image`` --
what the real-image upper bound of the toy recipe trains on (never used by the text-only runs).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from datagen.generator import SampleGenerator
from datagen.text.base import PromptTemplate, TextBackend, load_prompt
from datagen.text.world_writer import PROMPT_DIR, WorldWriter

from .parsing import clean_caption, parse_instructions, validate_caption

STAGES = ("captions", "instructions")


def _load(prompt: PromptTemplate | str | None, default: str) -> PromptTemplate:
    if isinstance(prompt, PromptTemplate):
        return prompt
    return load_prompt(prompt or os.path.join(PROMPT_DIR, default))


class UnicornText(SampleGenerator):
    """Stages 1 (and 2) of Unicorn, one seed per sample (see module docstring).

    Args:
        stage: ``"captions"`` (stage 1 only: ``{"seed", "caption"}``) or ``"instructions"`` (stages
            1+2: adds ``"items"`` and ``"rejects"``).
        backend: a :class:`TextBackend` (``TransformersBackend``, ``OpenAIHTTPBackend``, ...); None =
            the scene world's writer.
        seeds: None = world seed captions; else a text file with one seed caption per line (sample
            ``index`` takes line ``index mod n``).
        n_objects: object-count range of world scenes.
        render_size: also render the scene (``"image"``, PIL) at this size -- world seeds only.
        min_words: stage-1 captions shorter than this are rejected.
        max_new_tokens, temperature: generation settings of both stages.
        holdout: colour-shape combinations (``"red sphere"``) that no world scene of this stream contains
            (:mod:`datagen.world.holdout`): a scene holding one is redrawn. World seeds only.
    """

    def __init__(self, stage: str = "captions", backend: TextBackend | None = None, seeds: str | None = None,
                 n_objects: tuple[int, int] = (1, 6), render_size: int | None = None,
                 caption_prompt: str | None = None, instruction_prompt: str | None = None, min_words: int = 8,
                 max_new_tokens: int = 512, temperature: float = 0.7, holdout: list[str] | None = None) -> None:
        from datagen.world.holdout import parse_combos

        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        self.caption_prompt = _load(caption_prompt, "caption_expansion.yaml")
        self.instruction_prompt = _load(instruction_prompt, "instructions.yaml")
        self.backend = backend if backend is not None else WorldWriter(self.caption_prompt, self.instruction_prompt)
        self.n_objects, self.render_size = tuple(n_objects), render_size
        self.min_words, self.max_new_tokens, self.temperature = int(min_words), int(max_new_tokens), float(temperature)
        self.seed_lines: list[str] | None = None
        self.holdout = parse_combos(holdout, "UnicornText.holdout")
        if seeds is not None and self.holdout:
            raise ValueError("UnicornText.holdout needs world seeds (a seed file has no scenes to avoid)")
        if seeds is not None:
            if render_size is not None:
                raise ValueError("render_size needs world seeds (a seed file has no scenes to render)")
            if not os.path.isfile(seeds):
                raise FileNotFoundError(f"seed file {seeds!r} does not exist (one seed caption per line)")
            with open(seeds, encoding="utf-8") as f:
                self.seed_lines = [line.strip() for line in f if line.strip()]
            if not self.seed_lines:
                raise ValueError(f"seed file {seeds!r} has no non-empty line")

    def config(self) -> dict[str, Any]:
        """What determines the samples (for manifests and logs)."""
        import hashlib

        seeds = "world" if self.seed_lines is None else {
            "lines": len(self.seed_lines), "sha1": hashlib.sha1("\n".join(self.seed_lines).encode()).hexdigest()}
        return {"stage": self.stage, "backend": self.backend.config(), "n_objects": list(self.n_objects),
                "seeds": seeds, "render_size": self.render_size,
                "caption_prompt": self.caption_prompt.user, "instruction_prompt": self.instruction_prompt.user,
                "min_words": self.min_words, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                **({"holdout": sorted(" ".join(c) for c in self.holdout)} if self.holdout else {})}

    def _complete(self, messages, index: int, stage: int) -> tuple[str | None, str | None]:
        """The backend's text, or None and why (``http:500``, ``http:timeout``, ...: the drop's reason)."""
        out = self.backend.complete_with_causes([messages], max_new_tokens=self.max_new_tokens,
                                                temperature=self.temperature, seed=int(index) * 2 + stage)
        return out[0]

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        from datagen.world import render_scene, sample_scene, seed_caption

        sample: dict[str, Any] = {"json": {"index": int(index)}}
        scene = None
        if self.seed_lines is None:
            if self.holdout:
                from datagen.world.holdout import sample_scene_avoiding

                scene = sample_scene_avoiding(rng, self.n_objects, self.holdout)
            else:
                scene = sample_scene(rng, self.n_objects)
            seed = seed_caption(scene, rng)
            sample["json"]["scene"] = scene.to_dict()
            if isinstance(self.backend, WorldWriter):
                self.backend.bind(seed, scene)
        else:
            seed = self.seed_lines[index % len(self.seed_lines)]
        sample["seed"] = seed
        raw, cause = self._complete(self.caption_prompt.render(seed=seed), index, 0)
        if raw is None and cause is not None:  # the backend failed: its cause, not "empty"
            sample["__reject__"] = f"caption:{cause}"
            return sample
        caption = clean_caption(raw)
        reason = validate_caption(seed, caption, min_words=self.min_words)
        if reason is not None:
            sample["__reject__"] = f"caption:{reason}"
            return sample
        sample["caption"] = caption
        if self.stage == "instructions":
            raw, cause = self._complete(self.instruction_prompt.render(caption=caption), index, 1)
            if raw is None and cause is not None:
                sample["__reject__"] = f"instructions:{cause}"
                return sample
            items, rejects = parse_instructions(raw, caption)
            if self.holdout:  # "is there a red sphere? no" would name a held-out combination too
                from datagen.world.holdout import mentions

                kept = [it for it in items if not mentions(f"{it.get('question', '')} {it.get('answer', '')} "
                                                           f"{' '.join(map(str, it.get('options') or ()))}",
                                                           self.holdout)]
                if len(kept) < len(items):
                    rejects = Counter(rejects)
                    rejects["holdout"] += len(items) - len(kept)
                items = kept
            sample["items"], sample["rejects"] = items, dict(rejects)
            if not items:
                sample["__reject__"] = "instructions:" + (",".join(sorted(rejects)) or "empty")
                return sample
        if self.render_size is not None and scene is not None:
            sample["image"] = render_scene(scene, self.render_size, rng)
        return sample

    def validate(self, sample: dict) -> str | None:
        return sample.get("__reject__")


def reject_counts(samples: list[dict]) -> Counter:
    """Item-level stage-2 rejects summed over samples (sample-level drops are counted by the stream)."""
    total: Counter = Counter()
    for s in samples:
        total.update(s.get("rejects") or {})
    return total
