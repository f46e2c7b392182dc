"""Unicorn's paper-scale configs on real architectures, offline (issue 16, part 6).

``configs/unicorn/llama3_align.yaml`` (stage A, ZeRO-2) and ``llama3_instruct.yaml`` (stage B, ZeRO-3,
VQA evaluation) run through ``synthloop fit`` as shipped, with only their local paths, the device and
the sizes overridden: a tiny random ``LlamaForCausalLM`` with a Llama-3-style tokenizer and chat template
(``models.tiny_hf.build_tiny_llama_lm``) as ``lm_path``, open_clip ``ViT-B-16`` with random weights
(saved once as a local checkpoint) as the contrastive model, K = 576 repeated visual tokens as in the
config, DeepSpeed over gloo on CPU, world caption and instruction shards from ``synthloop datagen
unicorn``. Then ``synthloop export-hf`` and a Hugging Face ``AutoModelForImageTextToText`` load of the
result. Real classes driven: ``LlamaForCausalLM``, open_clip ViT-B-16, DeepSpeed ZeRO-2/3,
``AutoModelForImageTextToText``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fit(config: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train.cli", "fit", "--config", config, "--trainer.accelerator", "cpu",
           "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
           "--model.init_args.warmup_steps", "1", "--model.init_args.text_mean_warmup", "8",
           "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)


@pytest.mark.slow
def test_llama3_configs_run_stage_a_and_b_on_tiny_llama_and_random_vit_b16(tmp_path):
    import open_clip
    import torch

    from datagen import cli as dgcli
    from models.tiny_hf import build_tiny_llama_lm
    from train.unicorn.vqa_eval import build_world_vqa

    lm = build_tiny_llama_lm(tmp_path / "llama")
    clip = tmp_path / "vit_b16_random.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": open_clip.create_model("ViT-B-16", pretrained=None).state_dict()}, clip)
    shards = tmp_path / "shards"
    dgcli.main(["unicorn", "--config", "configs/unicorn/datagen_world.yaml", "--out", str(shards), "--n", "16",
                "--maxcount", "8"])
    vqa = build_world_vqa(tmp_path / "vqa", n_images=3)
    logs = tmp_path / "logs"
    common = ["--model.init_args.clip_model", "ViT-B-16", "--model.init_args.clip_checkpoint", str(clip),
              "--data.init_args.shards", str(shards / "shard-{000000..000001}.tar"),
              "--trainer.default_root_dir", str(logs), "--trainer.logger.init_args.save_dir", str(logs)]

    a = _fit("configs/unicorn/llama3_align.yaml", *common, "--model.init_args.lm_path", lm,
             "--model.init_args.export_dir", str(tmp_path / "align_vlm"))
    assert a.returncode == 0, a.stderr[-3000:]
    cfg = json.loads((tmp_path / "align_vlm" / "vlm_config.json").read_text())
    assert cfg["num_visual_tokens"] == 576 and cfg["embed_dim"] == 512  # the config's K; ViT-B-16's width

    b = _fit("configs/unicorn/llama3_instruct.yaml", *common, "--model.init_args.init_from", str(tmp_path / "align_vlm"),
             "--model.init_args.export_dir", str(tmp_path / "instruct_vlm"), "--model.init_args.eval_jsonl", str(vqa),
             "--model.init_args.eval_batch_size", "4")
    assert b.returncode == 0, b.stderr[-3000:]
    for stage, zero in (("align", 2), ("instruct", 3)):  # the configs' ZeRO stages, as DeepSpeed recorded them
        ckpt = logs / stage / "version_0" / "checkpoints" / "last.ckpt" / "checkpoint"
        states = torch.load(sorted(ckpt.glob("*model_states.pt"))[0], map_location="cpu", weights_only=False)
        assert states["ds_config"]["zero_optimization"]["stage"] == zero, stage
    results = json.loads((tmp_path / "instruct_vlm" / "vqa_results.json").read_text())
    n_questions = sum(1 for line in Path(vqa).read_text().splitlines() if line.strip())
    assert len(results["predictions"]) == n_questions

    hf = tmp_path / "hf"
    e = subprocess.run([sys.executable, "-m", "train.cli", "export-hf", "--vlm", str(tmp_path / "instruct_vlm"),
                        "--out", str(hf), "--reference-images", str(Path(vqa).parent / "images" / "*.png")],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=600)
    assert e.returncode == 0, e.stderr[-3000:]
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(hf, trust_remote_code=True)
    assert type(model).__name__ == "SynthloopVLMForConditionalGeneration"
    assert type(model.language_model).__name__ == "LlamaForCausalLM"
    assert model.config.image_centering == "pool_mean"
