"""Real-scale configs on real architectures, offline, through ``synthloop fit --tiny_random`` (issue 16, parts 1, 2, 6).

``--tiny_random`` (``train.core.tiny_random``) points a shipped config at stand-ins built under
``<default_root_dir>/tiny_random/``; only the device, the sizes and the output folders are overridden here.

* Unicorn: ``configs/unicorn/llama3_align.yaml`` (stage A, ZeRO-2) and ``llama3_instruct.yaml`` (stage B,
  ZeRO-3, VQA evaluation) on a tiny random ``LlamaForCausalLM`` with a Llama-3-style chat template, open_clip
  ``ViT-B-16`` with random weights, K = 576 repeated visual tokens as in the config, DeepSpeed over gloo,
  world shards; then ``synthloop export-hf`` and an ``AutoModelForImageTextToText`` load.
* Vision-Zero: ``configs/visionzero/qwen25vl_zero3.yaml`` (ZeRO-3, 4 civilians, 224 px) on a tiny random
  ``Qwen2_5_VLForConditionalGeneration`` with its real processor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fit(config: str, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train.cli", "fit", "--config", config, "--tiny_random",
           "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
           "--trainer.max_steps", "2", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
           *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)


def _zero_stage(logs: Path) -> int:
    import torch

    ckpt = logs / "version_0" / "checkpoints" / "last.ckpt" / "checkpoint"
    states = torch.load(sorted(ckpt.glob("*model_states.pt"))[0], map_location="cpu", weights_only=False)
    return int(states["ds_config"]["zero_optimization"]["stage"])  # as DeepSpeed recorded it


def test_tiny_random_refuses_a_config_it_does_not_know(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", "configs/quickstart.yaml",
                           "--tiny_random", "--trainer.default_root_dir", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("synthloop: error: --tiny_random knows Unicorn")


@pytest.mark.slow
def test_llama3_configs_run_stage_a_and_b_with_tiny_random(tmp_path):
    runs = tmp_path / "runs"
    a = _fit("configs/unicorn/llama3_align.yaml", runs, "--model.init_args.warmup_steps", "1",
             "--model.init_args.export_dir", str(tmp_path / "align_vlm"))
    assert a.returncode == 0, a.stderr[-3000:]
    assert "tiny-random: a tiny random Llama" in a.stderr
    cfg = json.loads((tmp_path / "align_vlm" / "vlm_config.json").read_text())
    assert cfg["num_visual_tokens"] == 576 and cfg["embed_dim"] == 512  # the config's K; ViT-B-16's width
    assert _zero_stage(runs / "align") == 2

    b = _fit("configs/unicorn/llama3_instruct.yaml", runs, "--model.init_args.warmup_steps", "1",
             "--model.init_args.init_from", str(tmp_path / "align_vlm"),
             "--model.init_args.export_dir", str(tmp_path / "instruct_vlm"), "--model.init_args.eval_batch_size", "4")
    assert b.returncode == 0, b.stderr[-3000:]
    assert _zero_stage(runs / "instruct") == 3
    vqa = runs / "tiny_random" / "vqa" / "vqa.jsonl"
    results = json.loads((tmp_path / "instruct_vlm" / "vqa_results.json").read_text())
    assert len(results["predictions"]) == sum(1 for line in vqa.read_text().splitlines() if line.strip())

    hf = tmp_path / "hf"
    from train.cli import main as cli  # `synthloop export-hf` in this process, as tests/test_hf_vlm_export.py does

    cli(["export-hf", "--vlm", str(tmp_path / "instruct_vlm"), "--out", str(hf),
         "--reference-images", str(vqa.parent / "images" / "*.png")])
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(hf, trust_remote_code=True)
    assert type(model).__name__ == "SynthloopVLMForConditionalGeneration"
    assert type(model.language_model).__name__ == "LlamaForCausalLM"
    assert model.config.image_centering == "pool_mean"


@pytest.mark.slow
def test_qwen25vl_zero3_config_runs_with_tiny_random(tmp_path):
    runs = tmp_path / "runs"
    proc = _fit("configs/visionzero/qwen25vl_zero3.yaml", runs, "--trainer.max_steps", "1",
                "--data.init_args.batch_size", "1", "--model.init_args.export_path", str(tmp_path / "export"),
                "--model.init_args.generation.clue_max_new_tokens", "8",  # a random LM rarely stops: 256 tokens a
                "--model.init_args.generation.decision_max_new_tokens", "8")  # turn are most of the time
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny-random: a tiny random Qwen2.5-VL" in proc.stderr
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "export")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
