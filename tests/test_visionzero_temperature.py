"""Vision-Zero log-probs at the SAMPLING temperature (issue 19, item 2).

Responses are sampled at ``generation.temperature`` (0.8 in the real-scale config); the policy-gradient
term and the k3 KL must score them under that same distribution, i.e. ``log_softmax(logits / T)`` (as
TRL's GRPO does for the policy, the old policy and the reference). For both policy adapters -- the toy
``EmbeddingVLMPolicy`` and ``HFVLMPolicy`` on a tiny random Qwen2.5-VL -- a response is sampled with the
model's own ``generate`` at temperature T (``top_k=0``, ``top_p=1.0``: the untruncated distribution),
and the adapter's ``logprobs(..., temperature=T)`` of the sampled tokens must equal their log-probs under
the sampler's processed scores. The trainer must pass that temperature to every score of a step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.conftest import build_tiny_game_policy
from train.visionzero.config import GenerationConfig, LossConfig, PhaseConfig
from train.visionzero.engine import Generation
from train.visionzero.policy import GenData, _sample_kwargs, score_temperature

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPTS = str(ROOT / "configs/visionzero/prompts/game_toy.yaml")
MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    """A random tiny EmbeddingVLM (1-layer Llama, world-game tokenizer, micro CLIP tower) saved to disk."""
    return build_tiny_game_policy(tmp_path_factory.mktemp("vz_temp"))


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory):
    from datagen.text.corpus import world_corpus
    from models.tiny_hf import build_tiny_qwen25_vl

    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny_qwen_temp") / "qwen", texts=world_corpus(200))


def _sampler_logprobs(out, new_tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of the sampled tokens under the sampler's own (processed) next-token distributions."""
    scores = torch.stack([s.float() for s in out.scores], 1)  # (B, steps, V): logits after the warpers
    raw = torch.stack([x.float() for x in out.logits], 1)
    # the only warper at top_k=0, top_p=1.0 is the temperature: the sampler drew from softmax(logits / T)
    assert torch.allclose(scores, raw / temperature, atol=1e-5)
    return torch.log_softmax(scores, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)


def _check(policy, gens: list[Generation], sampler_lp: torch.Tensor, temperature: float) -> None:
    lp, mask = policy.logprobs(gens, temperature=temperature)
    n_tok = 0
    for i, g in enumerate(gens):
        n = len(g.data.response_ids)
        assert n > 0 and mask[i].sum() == n
        assert torch.allclose(lp[i, :n], sampler_lp[i, :n], atol=1e-5), (temperature, lp[i, :n], sampler_lp[i, :n])
        n_tok += n
    assert n_tok >= 2 * len(gens)
    lp1, _ = policy.logprobs(gens, temperature=1.0)
    if temperature != 1.0:  # a temperature-1 score is NOT the sampler's distribution
        assert not torch.allclose(lp1 * mask, lp * mask, atol=1e-3)
    else:
        assert torch.equal(lp1, lp)


def test_score_temperature_greedy_and_none_mean_one():
    assert score_temperature(0.8) == 0.8 and score_temperature(0.5) == 0.5
    assert score_temperature(0.0) == score_temperature(-1.0) == score_temperature(None) == 1.0


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_embedding_policy_scores_match_its_sampler(tiny_policy_dir, temperature):
    from models.vlm import EmbeddingVLM
    from train.visionzero.policy import EmbeddingVLMPolicy

    torch.manual_seed(0)
    pol = EmbeddingVLMPolicy(EmbeddingVLM.from_pretrained(tiny_policy_dir))
    pol.vlm.eval()
    ims = [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]
    prompts = ["who is the spy?", "you are player 2 of 3. clues: none. give a new clue about your image."]
    ids = pol.encode_prompts(prompts)
    assert len(ids[0]) != len(ids[1])  # left-padded batch
    width, pad = max(map(len, ids)), pol.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    torch.manual_seed(1)
    with torch.no_grad():  # the adapter's own sampling call, without suppress_tokens (a truncation, see policy.py)
        out = pol.vlm.generate(input_ids, attention_mask=att, **pol._visual_kwargs(ims), eos_token_id=sorted(pol.eos_ids),
                               pad_token_id=pad, output_scores=True, output_logits=True, return_dict_in_generate=True,
                               **_sample_kwargs(MAX_NEW, temperature, 1.0, 0, False))
    new = out.sequences  # inputs_embeds generation: new tokens only
    gens = []
    for p_ids, row, im in zip(ids, new.tolist(), ims):
        resp = row[:next((i + 1 for i, t in enumerate(row) if t in pol.eos_ids), len(row))]
        gens.append(Generation(pol.tokenizer.decode(resp), GenData(p_ids, resp, im)))
    _check(pol, gens, _sampler_logprobs(out, new, temperature), temperature)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_hf_qwen25_vl_policy_scores_match_its_sampler(tiny_qwen_dir, temperature):
    from train.visionzero.policy import HFVLMPolicy

    pol = HFVLMPolicy.from_pretrained(tiny_qwen_dir, dtype="float32")
    pol.model.eval()
    ims = [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (120, 90), (0, 255, 0))]
    texts = [pol.format_prompt(p) for p in ("who is the spy?", "You are player 2 of 3. Give one short clue.")]
    enc = pol._process(texts, ims)
    torch.manual_seed(1)
    with torch.no_grad():
        out = pol.model.generate(**enc, pad_token_id=pol.tokenizer.pad_token_id, eos_token_id=sorted(pol.eos_ids),
                                 output_scores=True, output_logits=True, return_dict_in_generate=True,
                                 **_sample_kwargs(MAX_NEW, temperature, 1.0, 0, False))
    width = enc["input_ids"].shape[1]
    new = out.sequences[:, width:]
    gens = []
    for j, (text, im) in enumerate(zip(texts, ims)):
        row = new[j].tolist()
        resp = row[:next((i + 1 for i, t in enumerate(row) if t in pol.eos_ids), len(row))]
        p_ids = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
        gens.append(Generation(pol.tokenizer.decode(resp), GenData(p_ids, resp, im, prompt_text=text)))
    assert len({len(g.data.prompt_ids) for g in gens}) == 2  # left-padded batch
    _check(pol, gens, _sampler_logprobs(out, new, temperature), temperature)
    # greedy (temperature 0) scores at 1.0, the model's own distribution
    assert torch.equal(pol.logprobs(gens, temperature=0.0)[0], pol.logprobs(gens, temperature=1.0)[0])


def test_trainer_scores_policy_reference_and_anchor_at_the_sampling_temperature(tiny_policy_dir, tmp_path):
    """Every log-prob of a training step (π_θ, π_ref, the inactive-stage anchor) at ``generation.temperature``."""
    from datagen.visionzero import GameSetups, WorldPairs
    from train.core.datamodule import OnlineDataModule
    from train.visionzero.module import VisionZeroSelfPlay

    pl.seed_everything(0)
    m = VisionZeroSelfPlay(policy_path=tiny_policy_dir, prompts_path=TOY_PROMPTS, lr=1e-3, log_transcripts_every=0,
                           generation=GenerationConfig(clue_max_new_tokens=5, decision_max_new_tokens=4, temperature=0.5),
                           loss=LossConfig(inactive_kl=1.0), phase=PhaseConfig(k_min=1, patience=1000))
    m.configure_model()
    assert m.score_temperature == 0.5
    calls = []
    inner = m.policy.logprobs

    def recording(gens, model=None, micro_batch=None, temperature=1.0):
        calls.append((model, temperature))
        return inner(gens, model=model, micro_batch=micro_batch, temperature=temperature)

    m.policy.logprobs = recording
    data = OnlineDataModule(GameSetups(WorldPairs(n_objects=(2, 3)), n_civilians=2, rounds=1), batch_size=2,
                            num_workers=0, seed=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(m, datamodule=data)
    # policy, π_ref (the frozen copy) and the anchor snapshot, active and inactive stage: all at T = 0.5
    assert len(calls) == 4 and all(t == 0.5 for _, t in calls)
    assert any(model is m.ref for model, _ in calls) and any(model is m._anchor[1] for model, _ in calls)
    # π_ref's score is the reference model's temperature-0.5 distribution
    gens = m.policy.generate(["who is the spy?"], [Image.new("RGB", (64, 64), (255, 0, 0))], max_new_tokens=4,
                             temperature=0.5)
    with torch.no_grad():
        expect = inner(gens, model=m.ref, temperature=0.5)[0]
    assert torch.allclose(m.ref_logprobs(gens), expect, atol=1e-6)
    # greedy decoding: scores at temperature 1
    g0 = VisionZeroSelfPlay(policy_path=tiny_policy_dir, generation={"temperature": 0.0})
    assert g0.score_temperature == 1.0
