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


def torchrun_visionzero_fit(config_text: str, tmp_path, port: int) -> dict[int, list[dict]]:
    """Run ``synthloop fit`` on ``config_text`` with 2 CPU processes under torchrun; return each rank's
    game log (``games.jsonl.rank{r}``) after asserting the run exited 0 and that the games split over
    the ranks: no game on both, and the RAE baselines and phase decisions identical on both."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "vz.yaml"
    cfg.write_text(config_text)
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "train.cli", "fit", "--config", str(cfg)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = {r: [json.loads(x) for x in open(tmp_path / f"games.jsonl.rank{r}")] for r in (0, 1)}
    idx = {r: [g["index"] for e in logs[r] for g in e["games"]] for r in (0, 1)}
    assert not set(idx[0]) & set(idx[1])  # no game is played on both ranks
    for e0, e1 in zip(logs[0], logs[1]):  # RAE baselines and the phase controller are global
        assert e0["rae"] == e1["rae"] and e0["next_phase"] == e1["next_phase"]
    return logs


def build_tiny_game_policy(root) -> str:
    """A random tiny EmbeddingVLM for the spy game (1-layer Llama, world-game tokenizer, micro CLIP tower)
    saved under ``root``; returns the policy folder."""
    from pathlib import Path

    from datagen.visionzero.sft import GameSFTSamples
    from models.tiny_lm import build_tiny_lm
    from models.vlm import build_vlm

    prompts = Path(__file__).resolve().parents[1] / "configs/visionzero/prompts/game_toy.yaml"
    texts = GameSFTSamples(n_civilians=2, rounds=1, prompts_path=str(prompts)).corpus(60)
    texts.append(prompts.read_text())
    build_tiny_lm(root / "lm", texts=texts, hidden=32, layers=1, heads=2, max_positions=256)
    vlm = build_vlm(str(root / "lm"), 32, num_visual_tokens=2, token_mode="split",
                    vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"})
    vlm.save_pretrained(root / "policy")
    return str(root / "policy")
