"""CLIP pre-training in 2 processes (DDP over gloo on CPU), launched the way users launch it: torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_clip_pretraining_two_process_ddp(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631",
           "-m", "train.cli", "fit", "--config", str(ROOT / "tests/configs/clip_micro.yaml"),
           "--trainer.devices=2", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path}",
           f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.export_path={tmp_path}/clip.pt"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = tmp_path / "clip_micro" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    data = state["OnlineDataModule"]
    # the checkpoint (written by rank 0) carries both ranks' stream positions
    assert data["world_size"] == 2 and sorted(data["slot_state"]) == [0, 1]
    assert data["consumed_per_rank"] == [4 * 8, 4 * 8]
    # zero-shot table printed once (rank 0) and the open_clip export exists
    assert (tmp_path / "clip.pt").exists()
    assert proc.stdout.count("zero-shot accuracy at step 4") == 1
    # ... over every evaluation image once: each rank scores its own share, which Lightning must not split again
    from datagen.world import get_task_family

    n = sum(4 * len(get_task_family(f).classnames) for f in ("shape", "color"))  # eval_per_class 4
    assert f"zero-shot accuracy at step 4 ({n} images)" in proc.stdout, proc.stdout[-2000:]
