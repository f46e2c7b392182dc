"""Shared test fixtures: tiny generators and Lightning modules that run in seconds on CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from datagen.stream import SampleGenerator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class CountingGenerator(SampleGenerator):
    """Deterministic toy generator: a few random numbers per sample; every ``bad_every``-th index is invalid."""

    def __init__(self, bad_every: int = 0, raise_every: int = 0) -> None:
        self.bad_every = bad_every
        self.raise_every = raise_every

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        if self.raise_every and index % self.raise_every == self.raise_every - 1:
            raise RuntimeError(f"generator failed on sample {index}")
        x = rng.standard_normal(4).astype(np.float32)
        return {"x": torch.from_numpy(x), "index": index, "ok": not (self.bad_every and index % self.bad_every == 0)}

    def validate(self, sample: dict) -> str | None:
        return None if sample["ok"] else "marked invalid"


@pytest.fixture
def counting_generator():
    return CountingGenerator
