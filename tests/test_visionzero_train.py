"""Vision-Zero self-play training: loss, batched policy, Lightning steps, phase-state resume, 2-process placement."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from train.visionzero.config import GenerationConfig, LossConfig, PhaseConfig, RewardConfig
from train.visionzero.module import VisionZeroSelfPlay, all_reduce_sum, k3_kl, policy_loss
from tests.conftest import build_tiny_game_policy, torchrun_visionzero_fit

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPTS = str(ROOT / "configs/visionzero/prompts/game_toy.yaml")


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    """A random tiny EmbeddingVLM (1-layer Llama, world-game tokenizer, micro CLIP tower) saved to disk."""
    return build_tiny_game_policy(tmp_path_factory.mktemp("vz"))


def test_k3_kl_and_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -0.5]])
    kl = k3_kl(logp, ref)
    r = 1.0  # ref - logp at the second token
    assert kl.tolist()[0] == pytest.approx([0.0, float(torch.exp(torch.tensor(r))) - r - 1, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third token is padding
    loss, parts = policy_loss(logp, ref, mask, torch.tensor([2.0]), kl_coef=0.04)
    pg = 2.0 * (-1.0 - 2.0) / 2
    assert parts["pg"] == pytest.approx(pg)
    assert float(loss) == pytest.approx(-pg + 0.04 * float(kl[0, :2].mean()), rel=1e-6)
    loss.backward()
    assert logp.grad[0, 2] == 0.0  # padding gets no gradient
    # equal policy and reference: KL = 0 and zero advantages give a zero loss
    loss0, parts0 = policy_loss(ref.clone().requires_grad_(True), ref, mask, torch.zeros(1))
    assert float(loss0) == 0.0 and parts0["kl"] == 0.0
    tok, _ = policy_loss(logp.detach(), ref, mask, torch.tensor([2.0]), agg="token_mean")
    assert float(tok) == pytest.approx(-pg + 0.04 * float(kl[0, :2].mean()), rel=1e-6)


def test_batched_generation_matches_logprob_forward(tiny_policy_dir):
    """Generation (left-padded, KV cache) and the log-prob forward agree on the sampled tokens."""
    from models.vlm import EmbeddingVLM
    from train.visionzero.policy import EmbeddingVLMPolicy

    pol = EmbeddingVLMPolicy(EmbeddingVLM.from_pretrained(tiny_policy_dir))
    from PIL import Image

    ims = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    prompts = ["who is the spy?", "you are player 2 of 3. clues: none.", "give a new clue about your image."]
    torch.manual_seed(0)
    gens = pol.generate(prompts, ims, max_new_tokens=5, temperature=0.0)
    assert all(0 < len(g.data.response_ids) <= 5 for g in gens)
    logp, mask = pol.logprobs(gens)
    # greedy tokens are the argmax: their log-prob is the max of the distribution; batch = single rows
    for i, g in enumerate(gens):
        single = pol.generate([prompts[i]], [ims[i]], max_new_tokens=5, temperature=0.0)[0]
        assert single.data.response_ids == g.data.response_ids  # left padding does not change the result
        lp1, _ = pol.logprobs([single])
        n = len(g.data.response_ids)
        assert torch.allclose(lp1[0, :n], logp[i, :n], atol=1e-4)
        assert mask[i].sum() == n
    # fixed number of generation steps
    fixed = pol.generate(prompts, ims, max_new_tokens=4, min_new_tokens=4, temperature=1.0)
    assert all(len(g.data.response_ids) == 4 for g in fixed)


def _trainer(tmp_path, steps, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      default_root_dir=str(tmp_path), **kw)


def _module(policy_dir, generation=None, loss=None, rewards=None, **kw):
    args = dict(policy_path=policy_dir, prompts_path=TOY_PROMPTS, lr=1e-3, phase=PhaseConfig(k_min=1, patience=2),
                log_transcripts_every=0,
                generation=GenerationConfig(**{"clue_max_new_tokens": 6, "decision_max_new_tokens": 4,
                                               "temperature": 1.0, **(generation or {})}),
                loss=LossConfig(**(loss or {})), rewards=RewardConfig(**(rewards or {})))
    args.update(kw)
    return VisionZeroSelfPlay(**args)


def _data(batch_size=2, seed=0):
    from datagen.visionzero import GameSetups, WorldPairs
    from train.core.datamodule import OnlineDataModule

    return OnlineDataModule(GameSetups(WorldPairs(n_objects=(2, 3)), n_civilians=2, rounds=1),
                            batch_size=batch_size, num_workers=0, seed=seed)


def test_selfplay_steps_resume_restores_phase_state(tiny_policy_dir, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    # uninterrupted: 4 steps (k_min 1, patience 2 -> the phase switches), checkpoint every step
    pl.seed_everything(0)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="s{step}",
                          auto_insert_metric_name=False)
    m1 = _module(tiny_policy_dir, game_log=str(tmp_path / "a.jsonl"))
    _trainer(tmp_path, 4, callbacks=[ck]).fit(m1, datamodule=_data())
    hist = m1.phase_ctl.history
    assert len(hist) == 4 and {h["phase"] for h in hist} == {"decision", "clue"}
    assert m1.rae.n_updates == 4 * 2  # one RAE update per game, before its advantage
    state = torch.load(tmp_path / "ck" / "s2.ckpt", map_location="cpu", weights_only=False)
    assert state["visionzero"]["phase"]["iteration"] == 2
    assert state["visionzero"]["rae"]["n_updates"] == 4
    assert not any(k.startswith("ref.") for k in state["state_dict"])  # π_ref is rebuilt, not saved
    # resumed from step 2: the controller and baselines continue exactly where they were
    pl.seed_everything(0)
    m2 = _module(tiny_policy_dir, game_log=str(tmp_path / "b.jsonl"))
    _trainer(tmp_path, 4).fit(m2, datamodule=_data(), ckpt_path=str(tmp_path / "ck" / "s2.ckpt"))
    assert m2.phase_ctl.state_dict()["iteration"] == 4
    assert [h["phase"] for h in m2.phase_ctl.history] == [h["phase"] for h in hist]
    a = [json.loads(x) for x in open(tmp_path / "a.jsonl.rank0")]
    b = [json.loads(x) for x in open(tmp_path / "b.jsonl.rank0")]
    assert [e["step"] for e in b] == [2, 3]
    # same games after resume (stream positions) and the same phase for them
    assert [[g["index"] for g in e["games"]] for e in b] == [[g["index"] for g in e["games"]] for e in a[2:]]
    assert [e["phase"] for e in b] == [e["phase"] for e in a[2:]]
    assert b[0]["rae"]["n_updates"] == a[2]["rae"]["n_updates"]


def test_inactive_stage_anchor_is_off_by_default_and_measured_when_on(tiny_policy_dir, tmp_path):
    """``inactive_kl`` (off-spec): the other stage's outputs get a k3-KL anchor to π_ref; 0 = the paper."""
    metrics = {}
    for coef in (0.0, 1.0):
        pl.seed_everything(0)
        m = _module(tiny_policy_dir, loss={"inactive_kl": coef}, phase=PhaseConfig(k_min=1, patience=1000))  # decision
        m.configure_model()
        with torch.no_grad():  # the policy has moved away from π_ref (as after some updates)
            for prm in m.vlm.lm.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        trainer = _trainer(tmp_path / f"c{coef}", 2)
        trainer.fit(m, datamodule=_data())
        metrics[coef] = float(trainer.callback_metrics["loss/kl_inactive"])
        assert {h["phase"] for h in m.phase_ctl.history} == {"decision"}
    assert metrics[0.0] == 0.0
    # the anchor is the policy as the phase began: zero at the phase's first step, then the clues (not
    # trained in the decision stage) drift with the decision updates and the anchor measures it
    assert metrics[1.0] > 0.0
    phase, snap = m._anchor
    assert phase == "decision" and not any(q.requires_grad for q in snap.parameters())
    assert not any(k.startswith("_anchor") for k in m.state_dict())  # not a submodule: no checkpoint/optimizer entry
    ck = {}
    m.on_save_checkpoint(ck)
    assert ck["visionzero"]["anchor"]["phase"] == "decision"
    m2 = _module(tiny_policy_dir, loss={"inactive_kl": 1.0})
    m2.configure_model()
    m2.on_load_checkpoint(ck)
    restored = m2.phase_anchor("decision")  # resumed mid-phase: the saved snapshot, not the current policy
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), snap.state_dict().values()))


def test_rae_in_global_game_order_and_transcripts(tiny_policy_dir, tmp_path):
    m = _module(tiny_policy_dir, log_transcripts_every=1, n_transcripts=1,
                generation={"decision": "observer", "observer_samples": 3})
    m.configure_model()
    from datagen.stream import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs

    games = GameSetups(WorldPairs(n_objects=(2, 3)), n_civilians=2, rounds=1)
    setups = [games.setup(sample_rng(0, i), i) for i in (5, 1, 3)]
    records, timing = m.play(setups)
    assert timing["tokens"] > 0 and all(len(r.votes) == 3 for r in records)
    adv = m.score(records)
    # baselines updated game by game in index order (1, 3, 5), each BEFORE its game's advantage
    from train.visionzero.advantage import RoleAdvantage

    ref = RoleAdvantage(0.95)
    expect = {}
    for r in sorted(records, key=lambda r: r.setup.index):
        s = r.setup
        a_spy, a_civ = ref.step(r.clue_rewards[s.spy - 1], [r.clue_rewards[j - 1] for j in s.civilians])
        expect[s.index] = (a_spy, a_civ)
    for r, a in zip(records, adv["clue_adv"]):
        assert a[r.setup.spy - 1] == pytest.approx(expect[r.setup.index][0])
        assert [a[j - 1] for j in r.setup.civilians] == pytest.approx(expect[r.setup.index][1])
    assert all(len(d) == 3 for d in adv["dec_adv"])


def test_rewards_are_scored_once_with_the_runs_settings(tiny_policy_dir):
    """play() scores with the module's ``rewards`` section (engine.score_game); score() only takes advantages."""
    from datagen.stream import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs, clue_rewards, decision_rewards
    from train.visionzero.engine import score_game

    rw = RewardConfig(beta=0.3, lam=0.2, correct=2.0, abstain=-0.25, wrong=-1.5)
    m = _module(tiny_policy_dir, rewards=asdict(rw))
    m.configure_model()
    games = GameSetups(WorldPairs(n_objects=(2, 3)), n_civilians=2, rounds=1)
    setups = [games.setup(sample_rng(0, i), i) for i in range(3)]
    records, _ = m.play(setups)
    for r in records:
        s = r.setup
        assert r.clue_rewards == clue_rewards(r.votes, s.spy, s.n_players, beta=0.3, lam=0.2)
        assert r.decision_rewards == decision_rewards(r.votes, s.spy, correct=2.0, abstain=-0.25, wrong=-1.5)
    before = [(list(r.clue_rewards), list(r.decision_rewards)) for r in records]
    m.score(records)  # advantages only: the rewards stay as scored
    assert [(r.clue_rewards, r.decision_rewards) for r in records] == before
    # the observer variant's shaped reward, through the same function
    obs = _module(tiny_policy_dir, generation={"decision": "observer", "observer_samples": 2},
                  rewards={"observer": "shaped"})
    obs.configure_model()
    for r in obs.play(setups[:2])[0]:
        assert r.decision == "observer" and len(r.votes) == 2
        shaped = list(r.decision_rewards)
        assert score_game(r, RewardConfig(observer="shaped")).decision_rewards == shaped
        assert all(any(x == pytest.approx(v) for v in (-0.3, 0.3, 2.49)) for x in shaped)


def test_all_reduce_sum_is_by_name():
    out = all_reduce_sum({"b": 2, "a": torch.tensor(0.5), "c": 3.25})
    assert out == {"a": 0.5, "b": 2.0, "c": 3.25} and list(out) == ["a", "b", "c"]
    assert all(isinstance(v, float) for v in out.values())


def test_config_sections_parse_from_dicts_and_land_in_hparams_as_dicts(tiny_policy_dir):
    m = _module(tiny_policy_dir, generation={"temperature": 0.5, "batch_size": 3}, loss={"agg": "token_mean"},
                rewards={"beta": 0.2}, phase=PhaseConfig(mode="alternate"))
    assert m.generation.temperature == 0.5 and m.generation.batch_size == 3 and m.generation.clue_max_new_tokens == 6
    assert m.loss_cfg.agg == "token_mean" and m.rewards.beta == 0.2 and m.rewards.lam == 0.1
    assert m.phase_ctl.mode == "alternate" and m.rae.alpha == 0.95
    assert m.gen_kwargs()["batch_size"] == 3 and m.gen_kwargs()["clue"] == {"max_new_tokens": 6}
    for name in ("generation", "loss", "rewards", "phase"):  # plain dicts: checkpoints load with weights_only
        assert isinstance(m.hparams[name], dict)
    assert m.hparams["rewards"]["beta"] == 0.2
    with pytest.raises(ValueError, match="temprature"):
        VisionZeroSelfPlay(policy_path=tiny_policy_dir, generation={"temprature": 1.0})
    with pytest.raises(ValueError, match="decision"):
        GenerationConfig(decision="nobody")
    with pytest.raises(ValueError, match="observer"):
        RewardConfig(observer="bonus")


def test_warmup_is_in_steps(tiny_policy_dir):
    from train.core.optim import warmup_cosine

    m = _module(tiny_policy_dir, warmup_steps=3, total_steps=10)
    m.configure_model()
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [sched.lr_lambdas[0](s) for s in range(10)] == [warmup_cosine(s, 3, 10) for s in range(10)]
    assert sched.lr_lambdas[0](0) == pytest.approx(1 / 3)


CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_steps: 3
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  default_root_dir: {root}
model:
  class_path: train.visionzero.VisionZeroSelfPlay
  init_args:
    policy_path: {policy}
    prompts_path: {prompts}
    generation: {{clue_max_new_tokens: 5, decision_max_new_tokens: 4, temperature: 1.0}}
    lr: 0.001
    phase: {{k_min: 1, patience: 2}}
    log_transcripts_every: 0
    game_log: {root}/games.jsonl
data:
  class_path: train.core.OnlineDataModule
  init_args:
    generator:
      class_path: datagen.visionzero.GameSetups
      init_args:
        source:
          class_path: datagen.visionzero.WorldPairs
          init_args: {{n_objects: [2, 3]}}
        n_civilians: 2
        rounds: 1
    batch_size: 2
    num_workers: 0
    seed: 0
"""


@pytest.mark.slow
def test_two_process_games_stay_on_one_rank(tiny_policy_dir, tmp_path):
    logs = torchrun_visionzero_fit(CONFIG.format(root=tmp_path, policy=tiny_policy_dir, prompts=TOY_PROMPTS),
                                   tmp_path, port=29647)
    idx = {r: [g["index"] for e in logs[r] for g in e["games"]] for r in (0, 1)}
    assert len(idx[0]) == len(idx[1]) == 3 * 2
    assert sorted(idx[0] + idx[1]) == list(range(12))  # interleaved slots: every game exactly once
    for r in (0, 1):  # each game played whole on its rank: 3 clue turns and 2 votes
        assert all(g["turns"] == 3 and g["votes"] == 2 for e in logs[r] for g in e["games"])
    for e0, e1 in zip(logs[0], logs[1]):
        assert e0["acc_ema"] == pytest.approx(e1["acc_ema"])
