"""The world's text corpus: what the toy recipes' word-level tokenizer is built from.

Captions (dense and seed), question-answer pairs and stage-2 instruction JSON of ``n_scenes`` sampled
scenes, every prompt file under ``configs/**/prompts/``, and the numbers and letters the game and VQA
formats use. The vocabulary is a set, so the order of these texts does not matter.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from datagen.text.world_writer import instruction_items
from datagen.world import dense_caption, qa_pairs, sample_scene, seed_caption

CONFIG_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))


def world_corpus(n_scenes: int = 2000, seed: int = 0, max_objects: int = 6) -> list[str]:
    """Texts covering the world's language: captions, QA, instruction JSON, prompt files, numbers."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for _ in range(n_scenes):
        scene = sample_scene(rng, (0, max_objects))
        texts += [dense_caption(scene), seed_caption(scene, rng)]
        texts += [f"{q.question} {q.answer}" for q in qa_pairs(scene, rng)]
        texts += [str(item) for item in instruction_items(scene, rng)]
    texts += [Path(p).read_text() for p in sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "prompts", "*.yaml"),
                                                              recursive=True))]
    texts.append(" ".join(str(i) for i in range(0, 101)) + " A B C D E F G H N/A NA Player player")
    return texts
