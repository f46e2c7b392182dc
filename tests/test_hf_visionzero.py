"""Vision-Zero on a REAL Hugging Face VLM architecture: a tiny random Qwen2.5-VL (models/tiny_hf.py), CPU.

Drives the real classes end to end: ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``
(``Qwen2TokenizerFast``, ``Qwen2VLImageProcessor``) through ``HFVLMPolicy`` (generation, log-probs,
mRoPE positions under left padding), ``VisionZeroSelfPlay`` self-play steps with full fine-tuning
and with PEFT LoRA, and the exported policy loaded back with ``AutoModelForImageTextToText`` +
``AutoProcessor``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.conftest import torchrun_visionzero_fit
from train.visionzero.config import GenerationConfig, LossConfig, PhaseConfig

ROOT = Path(__file__).resolve().parents[1]
GAME_PROMPTS = str(ROOT / "configs/visionzero/prompts/game.yaml")  # the real-scale prompts (not the toy's)


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory):
    from datagen.text.corpus import world_corpus
    from models.tiny_hf import build_tiny_qwen25_vl

    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny_qwen") / "qwen", texts=world_corpus(200))


@pytest.fixture(scope="module")
def policy(tiny_qwen_dir):
    from train.visionzero.policy import HFVLMPolicy

    return HFVLMPolicy.from_pretrained(tiny_qwen_dir, dtype="float32")


def _images():
    # different sizes -> different numbers of <|image_pad|> tokens and image grids in one batch
    return [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (120, 90), (0, 255, 0)),
            Image.effect_noise((80, 80), 60).convert("RGB")]


PROMPTS = ["who is the spy?", "You are player 2 of 3. Clues so far: none. Give one short clue about your image.",
           "Vote: \\boxed{1}"]


def test_tiny_qwen25_vl_is_the_real_architecture_and_generates(tiny_qwen_dir, policy):
    """``build_tiny_qwen25_vl`` -> ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor`` via ``HFVLMPolicy``."""
    from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2TokenizerFast,
                              Qwen2VLImageProcessor)

    assert isinstance(policy.model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(policy.processor, Qwen2_5_VLProcessor)
    assert isinstance(policy.tokenizer, Qwen2TokenizerFast)
    assert isinstance(policy.processor.image_processor, Qwen2VLImageProcessor)
    cfg = policy.model.config
    tok = policy.tokenizer
    assert cfg.text_config.num_hidden_layers == 2 and cfg.text_config.hidden_size == 64
    assert cfg.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    for name, tid in (("<|image_pad|>", cfg.image_token_id), ("<|video_pad|>", cfg.video_token_id),
                      ("<|vision_start|>", cfg.vision_start_token_id), ("<|vision_end|>", cfg.vision_end_token_id)):
        assert tok.convert_tokens_to_ids(name) == tid
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert policy.model.dtype == torch.float32
    # the Qwen chat template: system turn, one vision block per image, generation prompt
    text = policy.format_prompt("who is the spy?")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>who is the spy?<|im_end|>\n<|im_start|>assistant\n")
    s = "Player 2: the red cube is left of the blue sphere. \\boxed{3}"
    assert tok.decode(tok(s)["input_ids"]) == s  # byte-level BPE round-trips
    # the processor expands <|image_pad|> to the image's merged patches (4..16 per image here)
    enc = policy.processor(text=[text], images=[_images()[1]], return_tensors="pt")
    n_img = int((enc["input_ids"] == cfg.image_token_id).sum())
    assert n_img == int(enc["image_grid_thw"].prod()) // 4 and 4 <= n_img <= 16
    assert enc["mm_token_type_ids"].shape == enc["input_ids"].shape
    gens = policy.generate(PROMPTS, _images(), max_new_tokens=6, temperature=1.0)
    assert len(gens) == 3 and all(0 < len(g.data.response_ids) <= 6 for g in gens)
    assert all(cfg.image_token_id not in g.data.response_ids for g in gens)  # placeholders are suppressed
    fixed = policy.generate(PROMPTS, _images(), max_new_tokens=5, min_new_tokens=5, temperature=1.0)
    assert all(len(g.data.response_ids) == 5 for g in fixed)


def test_left_padded_batch_equals_single_and_logprobs_match_generation(policy):
    """Greedy ``HFVLMPolicy.generate`` batched (left-padded, mixed image sizes) = one at a time; the
    log-prob forward (``[pad | prompt | response | pad]``, mRoPE from the extended ``mm_token_type_ids``)
    equals the single-row forward and the logits ``generate`` itself computed with the KV cache."""
    ims = _images()
    gens = policy.generate(PROMPTS, ims, max_new_tokens=8, temperature=0.0)
    lengths = [len(g.data.prompt_ids) for g in gens]
    assert len(set(lengths)) == 3  # really left-padded: three different prompt lengths
    logp, mask = policy.logprobs(gens)
    assert logp.shape == mask.shape == (3, max(len(g.data.response_ids) for g in gens))
    for i, g in enumerate(gens):
        single = policy.generate([PROMPTS[i]], [ims[i]], max_new_tokens=8, temperature=0.0)[0]
        assert single.data.response_ids == g.data.response_ids
        assert single.data.prompt_ids == g.data.prompt_ids
        lp1, m1 = policy.logprobs([single])
        n = len(g.data.response_ids)
        assert mask[i].sum() == n == m1.sum()
        assert torch.allclose(lp1[0, :n], logp[i, :n], atol=1e-5)
    # generation-time log-probs (KV cache, rope_deltas) = the training forward (no cache, full sequence)
    enc = policy._process([g.data.prompt_text for g in gens], ims)
    out = policy.model.generate(**enc, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                                output_logits=True, pad_token_id=policy.tokenizer.pad_token_id,
                                eos_token_id=sorted(policy.eos_ids), suppress_tokens=policy.suppress_ids)
    width = enc["input_ids"].shape[1]
    gen_lp = torch.stack([torch.log_softmax(x.float(), -1) for x in out.logits], 1)
    gen_lp = gen_lp.gather(-1, out.sequences[:, width:].unsqueeze(-1)).squeeze(-1)
    for i, g in enumerate(gens):
        n = len(g.data.response_ids)
        assert torch.allclose(gen_lp[i, :n], logp[i, :n], atol=1e-5)
    # the log-probs carry gradients to the model (policy-gradient loss)
    policy.logprobs(gens[:1])[0].sum().backward()
    assert policy.model.lm_head.weight.grad is not None
    policy.model.zero_grad(set_to_none=True)


def test_extend_per_token_inputs_covers_the_response():
    """The mRoPE bug: ``mm_token_type_ids`` (prompt length) must be extended over the appended response."""
    from train.visionzero.policy import extend_per_token_inputs

    enc = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long),
           "mm_token_type_ids": torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]]),
           "pixel_values": torch.zeros(2, 5), "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]])}
    kw = extend_per_token_inputs(enc, 3)
    assert set(kw) == {"mm_token_type_ids", "pixel_values", "image_grid_thw"}
    assert kw["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
    assert kw["pixel_values"] is enc["pixel_values"] and kw["image_grid_thw"] is enc["image_grid_thw"]


def _module(policy_dir, tmp_path, **kw):
    from train.visionzero.module import VisionZeroSelfPlay

    args = dict(policy_path=policy_dir, policy_type="hf_vlm", dtype="float32", prompts_path=GAME_PROMPTS,
                lr=1e-3, phase=PhaseConfig(k_min=1, patience=1), log_transcripts_every=1, n_transcripts=1,
                generation=GenerationConfig(clue_max_new_tokens=6, decision_max_new_tokens=5, temperature=1.0),
                loss=LossConfig(logprob_micro_batch=4), export_path=str(tmp_path / "export"),
                game_log=str(tmp_path / "games.jsonl"))
    args.update(kw)
    return VisionZeroSelfPlay(**args)


def _fit(module, tmp_path, steps=3):
    from datagen.visionzero import GameSetups, WorldPairs
    from train.core.datamodule import OnlineDataModule

    data = OnlineDataModule(GameSetups(WorldPairs(size=64, n_objects=(2, 3)), n_civilians=2, rounds=1),
                            batch_size=2, num_workers=0, seed=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         enable_checkpointing=False, gradient_clip_val=1.0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    return trainer


def _perturb(params, scale=0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _answers_with_auto_classes(folder):
    """The exported folder loads with ``AutoModelForImageTextToText`` + ``AutoProcessor`` and answers."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is the spy? Vote."}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[_images()[2]], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert len(new) > 0
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)
    return model


def test_selfplay_full_finetune_on_tiny_qwen_and_export(tiny_qwen_dir, tmp_path):
    """``VisionZeroSelfPlay`` (policy_type hf_vlm, full fine-tuning, π_ref a second frozen copy): 3 self-play
    steps through both phases; the exported policy loads with the Auto classes and generates."""
    pl.seed_everything(0)
    m = _module(tiny_qwen_dir, tmp_path)
    m.configure_model()
    # a random policy's votes never parse: equal rewards, zero advantages. Move the policy away from π_ref
    # (as after some updates) so that the KL term has a gradient and the optimizer really steps.
    _perturb(p for p in m.vlm.parameters())
    before = _params(m.vlm)
    ref_before = _params(m.ref)
    trainer = _fit(m, tmp_path, steps=3)
    hist = m.phase_ctl.history
    assert len(hist) == 3 and {h["phase"] for h in hist} == {"decision", "clue"}
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and trainer.callback_metrics["loss/kl"] > 0
    log = [json.loads(x) for x in open(tmp_path / "games.jsonl.rank0")]
    assert all(g["turns"] == 3 and g["votes"] == 2 for e in log for g in e["games"])
    after = _params(m.vlm)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy was updated
    assert all(torch.equal(ref_before[k], v) for k, v in _params(m.ref).items())  # π_ref stays frozen
    assert not any(p.requires_grad for p in m.ref.parameters())
    export = tmp_path / "export"
    assert (export / "phase_history.json").exists()
    loaded = _answers_with_auto_classes(export)
    sd = dict(loaded.named_parameters())
    assert all(torch.equal(sd[k], v) for k, v in after.items())  # the exported weights are the trained ones


def test_selfplay_lora_on_tiny_qwen_reference_is_adapters_disabled(tiny_qwen_dir, tmp_path):
    """LoRA (PEFT ``get_peft_model``, all-linear) + gradient checkpointing: no second copy; π_ref = adapters
    disabled = the initial model; the base weights stay frozen; the export merges the adapters."""
    from peft import PeftModel

    from train.visionzero.policy import HFVLMPolicy

    pl.seed_everything(0)
    m = _module(tiny_qwen_dir, tmp_path, lora={"r": 4, "alpha": 8, "dropout": 0.0}, lr=1e-2,
                gradient_checkpointing=True)  # as in configs/visionzero/qwen25vl_zero3.yaml
    m.configure_model()
    assert m.ref is None and isinstance(m.vlm, PeftModel)
    base_before = {k: v for k, v in _params(m.vlm).items() if "lora_" not in k}
    assert all(not p.requires_grad for k, p in m.vlm.named_parameters() if "lora_" not in k)
    _perturb((p for k, p in m.vlm.named_parameters() if "lora_B" in k), scale=0.5)  # adapters on != π_ref
    lora_before = {k: v for k, v in _params(m.vlm).items() if "lora_" in k}
    trainer = _fit(m, tmp_path, steps=2)
    assert trainer.callback_metrics["loss/kl"] > 0
    after = _params(m.vlm)
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)  # only adapters train
    assert lora_before and any(not torch.equal(lora_before[k], after[k]) for k in lora_before)  # adapters moved
    # π_ref (adapters off) = the untouched initial model, the policy (adapters on) has moved
    initial = HFVLMPolicy.from_pretrained(tiny_qwen_dir, dtype="float32")
    gens = m.policy.generate(PROMPTS, _images(), max_new_tokens=5, temperature=0.0)
    ref_lp = m.ref_logprobs(gens)
    init_lp, mask = initial.logprobs(gens)
    assert torch.allclose(ref_lp * mask, init_lp.detach() * mask, atol=1e-5)
    with torch.no_grad():
        pol_lp, _ = m.policy.logprobs(gens)
    assert not torch.allclose(pol_lp * mask, init_lp.detach() * mask, atol=1e-4)
    # the export is a plain Qwen2.5-VL with the adapters merged: it scores like the LoRA policy
    model = _answers_with_auto_classes(tmp_path / "export")
    assert not any("lora_" in k for k, _ in model.named_parameters())
    exported = HFVLMPolicy(model, initial.processor)
    with torch.no_grad():
        exp_lp, _ = exported.logprobs(gens)
    m.vlm.eval()
    with torch.no_grad():
        pol_lp, _ = m.policy.logprobs(gens)
    assert torch.allclose(exp_lp * mask, pol_lp * mask, atol=1e-4)


def test_tiny_llama_lm_is_a_real_llama_with_a_chat_template(tmp_path):
    """``build_tiny_llama_lm`` -> ``LlamaForCausalLM`` + a byte-level BPE tokenizer, via the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from models.tiny_hf import build_tiny_llama_lm

    folder = build_tiny_llama_lm(tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert isinstance(model, LlamaForCausalLM) and tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "who is the spy?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nwho is the spy?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    texts = [text, text.replace("spy?", "spy? Player 2 said: a red cube.")]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"][0, 0] == 0  # left-padded
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    batch = model.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:]
    for i, t in enumerate(texts):
        one = tok([t], return_tensors="pt", add_special_tokens=False)
        assert model.generate(**one, **kw)[0, one["input_ids"].shape[1]:].tolist() == batch[i].tolist()


DDP_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_steps: 2
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  logger: false
  default_root_dir: {root}
model:
  class_path: train.visionzero.VisionZeroSelfPlay
  init_args:
    policy_path: {policy}
    policy_type: hf_vlm
    dtype: float32
    prompts_path: {prompts}
    generation: {{clue_max_new_tokens: 5, decision_max_new_tokens: 4, temperature: 1.0}}
    lr: 0.001
    phase: {{k_min: 1, patience: 1}}
    log_transcripts_every: 0
    game_log: {root}/games.jsonl
    export_path: {root}/export
    num_threads: 1
data:
  class_path: train.core.OnlineDataModule
  init_args:
    generator:
      class_path: datagen.visionzero.GameSetups
      init_args:
        source:
          class_path: datagen.visionzero.WorldPairs
          init_args: {{size: 64, n_objects: [2, 3]}}
        n_civilians: 2
        rounds: 1
    batch_size: 1
    num_workers: 0
    seed: 0
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy,port", [("ddp", 29657), ("deepspeed_stage_3", 29667)])
def test_two_process_selfplay_on_tiny_qwen(tiny_qwen_dir, tmp_path, strategy, port):
    """``synthloop fit`` (train.cli) with ``VisionZeroSelfPlay`` on the tiny Qwen2.5-VL, 2 CPU processes: DDP, and
    DeepSpeed ZeRO-3 over gloo (the real-scale config's strategy; generation with ``synced_gpus``)."""
    config = DDP_CONFIG.format(root=tmp_path, policy=tiny_qwen_dir, prompts=GAME_PROMPTS)
    logs = torchrun_visionzero_fit(config.replace("strategy: ddp", f"strategy: {strategy}"), tmp_path, port=port)
    idx = {r: [g["index"] for e in logs[r] for g in e["games"]] for r in (0, 1)}
    assert sorted(idx[0] + idx[1]) == list(range(4))
    _answers_with_auto_classes(tmp_path / "export")  # rank 0 exported a loadable Qwen2.5-VL
