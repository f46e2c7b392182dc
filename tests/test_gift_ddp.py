"""One GIFT task in 2 processes (torchrun, DDP over gloo): replay set split across ranks, one result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_gift_task_two_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29641",
           "-m", "train.cli", "continual", "--tasks=[shape]", "--method=gift", "--model_name=synthloop-micro-vit32",
           f"--out_dir={tmp_path}/run", f"--replay_cache={tmp_path}/cache", "--steps_per_task=3", "--batch_size=4",
           "--warmup_steps=1", "--replay_size=10", "--replay_backend={backend: world, image_size: 32}",
           "--eval_per_class=2", "--devices=2", "--strategy=ddp", "--checkpoint_every=3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["done"] == 1
    sets = list((tmp_path / "cache").glob("replay-*"))
    assert len(sets) == 1
    # each rank generated its own part of the one replay set
    assert sorted(p.name for p in sets[0].iterdir() if p.is_dir()) == ["w002-r000", "w002-r001"]
    assert (sets[0] / "COMPLETE").exists()
    matrix = json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())
    assert matrix["names"] == ["shape"] and matrix["matrix"][0][0] is not None
    assert proc.stdout.count("after task 0 (shape)") == 1  # printed by rank 0 only
