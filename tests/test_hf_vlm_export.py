"""The Unicorn VLM exported for the Hugging Face Auto classes (models/hf_vlm): a fresh interpreter loads it with
``AutoModelForImageTextToText`` + ``AutoProcessor`` (trust_remote_code, no synthloop module imported) and its
pixels, logits and greedy replies equal the EmbeddingVLM's own; the centring rule is recorded; an uncentred
export is refused unless asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import UserError
from models.hf_vlm import save_hf_vlm
from models.tiny_lm import build_tiny_lm
from models.vlm import build_vlm
from train.core.vlm_data import generation_prompt, prompt_ids

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["there is one object: a small red rubber cube.", "what colour is the cube? red", "a blue metal sphere"]
QUESTIONS = ["what colour is the cube?", "how many objects are there?"]

CLIENT = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

folder, images, questions = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3])
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
proc = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
proc.tokenizer.padding_side = "left"
prompts = [proc.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\n" + q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]
inputs = proc(text=prompts, images=[Image.open(p).convert("RGB") for p in images], padding=True)
with torch.no_grad():
    logits = model(**inputs).logits[:, -1].tolist()
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
print(json.dumps({"model": type(model).__name__, "processor": type(proc).__name__,
                  "pixels": inputs["pixel_values"].tolist(), "logits": logits,
                  "new": out[:, inputs["input_ids"].shape[1]:].tolist(),
                  "centering": cfg.image_centering, "count": cfg.image_mean_count,
                  "synthloop_modules": [m for m in sys.modules if m.split(".")[0] in ("models", "train", "datagen")]}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_vlm")
    build_tiny_lm(root / "lm", texts=TEXTS, hidden=32, layers=1, heads=2, max_positions=256)
    vlm = build_vlm(str(root / "lm"), 32, num_visual_tokens=2, token_mode="split",
                    vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"})
    vlm.apply_lora(r=4, alpha=8, dropout=0.0)  # merged on export
    torch.manual_seed(0)
    for name, p in vlm.lm.named_parameters():  # LoRA B starts at zero: make the adapters change the LM
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    pool = torch.stack([vlm.vision_tower.preprocess(Image.open(p).convert("RGB")) for p in images] * 3)
    save_hf_vlm(vlm, root / "hf", reference_images=pool)
    return vlm.eval(), root / "hf", images


def test_a_fresh_interpreter_loads_it_with_the_auto_classes_and_answers_like_the_vlm(exported, tmp_path):
    vlm, folder, images = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(folder), ",".join(images), json.dumps(QUESTIONS)],
                          cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["model"] == "SynthloopVLMForConditionalGeneration" and got["processor"] == "SynthloopVLMProcessor"
    assert got["synthloop_modules"] == []
    assert got["centering"] == "pool_mean" and got["count"] == 6
    # the same inputs through the EmbeddingVLM
    tower = vlm.vision_tower
    pixels = torch.stack([tower.preprocess(Image.open(p).convert("RGB")) for p in images])
    assert torch.allclose(torch.tensor(got["pixels"]), pixels, atol=1e-5)
    tok = vlm.tokenizer
    tok.padding_side = "left"
    prompts = [vlm.expand_image_tokens(generation_prompt(tok, vlm.config.image_token + "\n" + q)) for q in QUESTIONS]
    ids = [prompt_ids(tok, p) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.no_grad():
        logits = vlm(input_ids, attention_mask=mask, images=pixels).logits[:, -1]
        new = vlm.generate(input_ids, attention_mask=mask, images=pixels, max_new_tokens=6, do_sample=False)
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-4)
    assert got["new"] == new.tolist()


def test_the_folder_is_checksummed_and_self_contained(exported):
    _, folder, _ = exported
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_synthloop_vlm.py", "modeling_synthloop_vlm.py",
            "processing_synthloop_vlm.py", "processor_config.json", "checksums.sha256"} <= names
    for name in ("configuration_synthloop_vlm.py", "modeling_synthloop_vlm.py", "processing_synthloop_vlm.py"):
        imported = {line.split()[1].split(".")[0] for line in (folder / name).read_text().splitlines()
                    if line.startswith(("import ", "from "))}
        assert not imported & {"models", "train", "datagen"}, (name, imported)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForImageTextToText"].endswith("SynthloopVLMForConditionalGeneration")
    assert cfg["vision_config"]["vision_cfg"] and cfg["text_config"]["model_type"] == "llama"


def test_an_uncentred_tower_is_refused_unless_asked_for(tmp_path):
    build_tiny_lm(tmp_path / "lm", texts=TEXTS, hidden=32, layers=1, heads=2, max_positions=256)
    vlm = build_vlm(str(tmp_path / "lm"), 32, vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"})
    with pytest.raises(UserError, match="image_mean is zero: give reference_images"):
        save_hf_vlm(vlm, tmp_path / "hf")
    save_hf_vlm(vlm, tmp_path / "hf", image_centering="none")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["image_centering"] == "none"
    text_only = build_vlm(str(tmp_path / "lm"), 32)
    with pytest.raises(UserError, match="no open_clip vision tower"):
        save_hf_vlm(text_only, tmp_path / "hf2")


def test_export_hf_command(tmp_path, capsys):
    from train.cli import main as cli

    build_tiny_lm(tmp_path / "lm", texts=TEXTS, hidden=32, layers=1, heads=2, max_positions=256)
    vlm = build_vlm(str(tmp_path / "lm"), 32, vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"})
    vlm.save_pretrained(tmp_path / "vlm")
    cli(["export-hf", "--vlm", str(tmp_path / "vlm"), "--out", str(tmp_path / "hf"), "--world-pool", "8"])
    assert "centred with the mean of 8 reference image(s)" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["image_centering"] == "pool_mean" and cfg["image_mean_count"] == 8
    with pytest.raises(SystemExit) as exc:
        cli(["export-hf", "--vlm", str(tmp_path / "lm"), "--out", str(tmp_path / "x"), "--no-centering"])
    assert exc.value.code == 2 and "not a synthloop VLM folder" in capsys.readouterr().err
