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


def pytest_report_header(config):
    """Free disk where the tests write: a full disk makes checkpoint writes and tmp_path fail in odd places."""
    import shutil
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    line = f"free disk in {tempfile.gettempdir()}: {free:.1f} GiB"
    if free < 3:
        line += " -- LOW: the suite needs ~1.5 GiB while it runs (set TMPDIR to a roomier disk)"
    return line


@pytest.fixture
def counting_generator():
    return CountingGenerator


def write_edited_config(src, tmp_path, edit, name: str = "bad.yaml"):
    """``src`` (a YAML config) with ``edit(cfg)`` applied, written to ``tmp_path / name``; returns its path."""
    import yaml

    cfg = yaml.safe_load(open(src).read())
    edit(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path
