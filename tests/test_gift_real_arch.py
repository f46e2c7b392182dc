"""GIFT's real-scale config on its real architecture, offline (issue 16, part 5).

``configs/gift/mtil_order1.yaml`` is run as a user would, through ``synthloop continual``, with
``--tiny_random true``: open_clip ``ViT-B-16`` with random weights (the config's architecture, 224 px),
a tiny random ``StableDiffusionPipeline`` behind the config's ``diffusers`` replay backend, and a
miniature MTIL tree in the layout of ``docs/mtil.md`` (``datagen.gift.mini_mtil``: the real class lists
and templates, one generated image per class and split). Two folder tasks of one step each (a ViT-B-16 step takes ~9 s on 2 cores): replay generation,
training, zero-shot evaluation over every class, the accuracy matrix, and a resume at the task
boundary. Real classes driven: ``open_clip`` ViT-B-16, ``diffusers.StableDiffusionPipeline``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.gift.folders import index_split, load_task_info
from datagen.gift.mini_mtil import build_mini_mtil
from datagen.gift.mtil_meta import MTIL_META

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["MNIST", "EuroSAT"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train.cli", "continual", "--config", "configs/gift/mtil_order1.yaml",
           "--tiny_random", "true", "--tasks", "[" + ", ".join(f"folder:{t}" for t in TASKS) + "]",
           "--out_dir", str(out), "--steps_per_task", "1", "--batch_size", "2", "--replay_size", "2",
           "--warmup_steps", "1", "--task_lr", "{MNIST: 5.0e-5}",
           "--checkpoint_every", "100",  # no step checkpoints: each holds ViT-B-16, its teacher and Adam (~2.4 GB)
           *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)


def test_mini_mtil_tree_has_the_real_layout_and_class_lists(tmp_path):
    root = build_mini_mtil(tmp_path / "mtil", ["Aircraft", "MNIST"], per_class=2, image_size=16)
    for name in ("Aircraft", "MNIST"):
        classes, templates = load_task_info(root, name)
        assert classes == list(MTIL_META[name].classnames) and templates == list(MTIL_META[name].templates)
        for split in ("train", "test"):
            items = index_split(root, name, split, len(classes))
            assert len(items) == 2 * len(classes)
            assert sorted({label for _, label in items}) == list(range(len(classes)))
    assert not list((tmp_path / "mtil").glob(".*.partial"))
    # built once: the same call keeps it; other settings on the same folder are refused
    mtime = (root / "MNIST" / "meta.json").stat().st_mtime_ns
    build_mini_mtil(root, ["MNIST"], per_class=2, image_size=16)
    assert (root / "MNIST" / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="MNIST"):
        build_mini_mtil(root, ["MNIST"], per_class=3, image_size=16)


@pytest.mark.slow
def test_mtil_order1_config_runs_on_random_vit_b16_with_tiny_diffusion_replay_and_resumes(tmp_path):
    import torch

    out = tmp_path / "run"
    first = _run(out, "--max_tasks", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tiny-random: ViT-B-16 with random weights" in first.stderr
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == 1 and state["tasks"] == TASKS

    # replay came from the diffusers backend (the tiny pipeline), cached under the run's own folder
    sets = [json.loads(p.read_text()) for p in (out / "tiny_random" / "replay_cache").rglob("set.json")]
    assert sets and all('"backend": "diffusers"' in json.dumps(s) for s in sets), sets[:1]
    assert (out / "tiny_random" / "sd" / "model_index.json").is_file()

    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after 1 finished tasks" in second.stderr
    matrix = json.loads((out / "accuracy_matrix.json").read_text())
    assert matrix["names"] == TASKS
    assert len(matrix["matrix"]) == 2 and all(len(r) == 2 and None not in r for r in matrix["matrix"])
    zs = json.loads((out / "items" / "zeroshot.json").read_text())
    assert {k: len(v) for k, v in zs["test"].items()} == {"MNIST": 10, "EuroSAT": 10}  # every class, 1 each
    sd = torch.load(out / "task01-EuroSAT" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert sd["visual.conv1.weight"].shape == (768, 3, 16, 16)  # ViT-B/16's patch embedding
    assert sd["visual.positional_embedding"].shape == (197, 768)  # 224 px: 14 x 14 patches + class token
