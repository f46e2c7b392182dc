"""lmms-eval reads the Unicorn VLM (train/unicorn/lmms_adapter.py): `python -m lmms_eval --model synthloop_vlm` on
an export-hf folder and a world VQA exported as an lmms-eval task gives the same replies and the same accuracy as
synthloop's own evaluate_vqa."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from models.hf_vlm import save_hf_vlm  # noqa: E402
from models.tiny_lm import build_tiny_lm  # noqa: E402
from models.vlm import build_vlm  # noqa: E402
from train.unicorn.lmms_adapter import export_task  # noqa: E402
from train.unicorn.vqa_eval import build_world_vqa, evaluate_vqa, load_vqa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_lmms_eval_scores_the_exported_vlm_like_evaluate_vqa(tmp_path):
    import torch
    from PIL import Image

    vqa = build_world_vqa(tmp_path / "vqa", n_images=6, image_size=32, questions_per_image=2)
    texts = [r["question"] + " " + r["answer"] + " " + " ".join(r.get("choices") or []) for r in load_vqa(vqa)]
    build_tiny_lm(tmp_path / "lm", texts=texts, hidden=32, layers=1, heads=2, max_positions=256)
    torch.manual_seed(0)
    vlm = build_vlm(str(tmp_path / "lm"), 32, num_visual_tokens=2, token_mode="split",
                    vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"}).eval()
    with torch.no_grad():  # a random LM that says words (not EOS at once), varying with the image
        head = vlm.lm.get_output_embeddings().weight
        head.mul_(50.0)
        head[vlm.tokenizer.all_special_ids] = 0.0
    for p in vlm.projector.parameters():
        torch.nn.init.normal_(p, std=1.0)
    ours = evaluate_vqa(vlm, vqa, max_new_tokens=8)  # centred on the benchmark's own images (the default)
    records = load_vqa(vqa)
    paths = sorted({r["image_path"] for r in records})
    pool = torch.stack([vlm.vision_tower.preprocess(Image.open(p).convert("RGB")) for p in paths])
    save_hf_vlm(vlm, tmp_path / "hf", reference_images=pool)  # the same centring, baked in
    export_task(vqa, tmp_path / "task", max_new_tokens=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "synthloop_vlm", "--model_args",
                           f"pretrained={tmp_path / 'hf'},device=cpu,trust_remote_code=True", "--tasks", "synthloop_vqa",
                           "--include_path", str(tmp_path / "task"), "--batch_size", "4", "--log_samples",
                           "--output_path", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list((tmp_path / "out").rglob("*_results.json"))
    assert results, proc.stdout[-2000:] + proc.stderr[-2000:]
    acc = json.loads(results[0].read_text())["results"]["synthloop_vqa"]["synthloop_acc,none"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    print("\nlmms-eval printed:\n" + "\n".join(table) + f"\nevaluate_vqa: accuracy {ours['accuracy']}")  # pytest -s
    assert abs(acc - ours["accuracy"]) < 1e-9
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("*synthloop_vqa*.jsonl")
               for line in f.read_text().splitlines() if line.strip()]
    replies = {s["doc_id"]: (s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"])
               for s in samples}
    assert len(replies) == len(records)
    assert any(p["reply"] for p in ours["predictions"])  # the random model says something
    assert [replies[i].strip() for i in range(len(records))] == [p["reply"] for p in ours["predictions"]]
