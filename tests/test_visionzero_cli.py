"""Vision-Zero commands: ``synthloop visionzero-eval`` reads the run's settings, ``visionzero-toy`` chains
its stages in process, and both answer ``--help`` without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPTS = str(ROOT / "configs/visionzero/prompts/game_toy.yaml")


@pytest.mark.parametrize("command", ["visionzero-eval", "visionzero-toy"])
def test_help_is_answered_before_torch_is_imported(command):
    code = ("import sys\nfrom train.cli import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'pytorch_lightning', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"usage: synthloop {command}" in out
    assert out.strip().splitlines()[-1] == "HEAVY=", out[-300:]


def _config(tmp_path, init_args: dict) -> str:
    cfg = {"model": {"class_path": "train.visionzero.VisionZeroSelfPlay", "init_args": init_args},
           "data": {"init_args": {"generator": {"init_args": {
               "n_civilians": 2, "rounds": 1, "source": {"init_args": {"n_objects": [2, 3]}}}}}}}
    path = tmp_path / "selfplay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_eval_reads_generation_and_rewards_sections_of_the_run(tmp_path):
    from train.visionzero.evaluate import load_game_config

    path = _config(tmp_path, {"prompts_path": TOY_PROMPTS,
                              "generation": {"temperature": 0.7, "clue_max_new_tokens": 12},
                              "rewards": {"beta": 0.5, "lam": 0.3, "wrong": -2.0}})
    g = load_game_config(path)
    assert (g["temperature"], g["clue_max_new_tokens"], g["decision_max_new_tokens"]) == (0.7, 12, 8)
    assert g["rewards"] == {"beta": 0.5, "lam": 0.3, "correct": 1.0, "abstain": -0.5, "wrong": -2.0,
                            "observer": "paper"}
    assert (g["n_civilians"], g["rounds"], g["prompts_path"]) == (2, 1, TOY_PROMPTS)
    # the shipped toy config: the same values the training run uses
    toy = load_game_config(str(ROOT / "configs/visionzero/toy_selfplay.yaml"))
    assert (toy["temperature"], toy["clue_max_new_tokens"], toy["decision_max_new_tokens"]) == (1.0, 16, 8)
    assert toy["rewards"]["beta"] == 0.1 and toy["rewards"]["lam"] == 0.1
    bad = _config(tmp_path, {"rewards": {"betta": 0.5}})
    with pytest.raises(ValueError, match="betta"):
        load_game_config(bad)


def test_eval_tables_are_scored_with_the_runs_rewards(tmp_path):
    """The evaluation's games carry the run's rewards (not the defaults): one scoring function for both."""
    from datagen.visionzero import clue_rewards, decision_rewards
    from models.tiny_lm import build_tiny_lm
    from models.vlm import build_vlm
    from datagen.visionzero.sft import GameSFTSamples
    from train.visionzero.evaluate import heldout_setups, load_game_config, load_policy, play_table

    texts = GameSFTSamples(n_civilians=2, rounds=1, prompts_path=TOY_PROMPTS).corpus(20)
    build_tiny_lm(tmp_path / "lm", texts=texts, hidden=16, layers=1, heads=2, max_positions=256)
    build_vlm(str(tmp_path / "lm"), 32, num_visual_tokens=1, token_mode="split",
              vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"}).save_pretrained(tmp_path / "p")
    g = load_game_config(_config(tmp_path, {"prompts_path": TOY_PROMPTS,
                                            "generation": {"clue_max_new_tokens": 3, "decision_max_new_tokens": 3},
                                            "rewards": {"beta": 0.5, "lam": 0.3, "correct": 2.0, "wrong": -2.0}}))
    setups = heldout_setups(g, 2, seed=3)
    recs = play_table(setups, {"base": load_policy(str(tmp_path / "p"))}, "base", "base", g, seed=0)
    for r in recs:
        s = r.setup
        assert r.clue_rewards == clue_rewards(r.votes, s.spy, s.n_players, beta=0.5, lam=0.3)
        assert r.decision_rewards == decision_rewards(r.votes, s.spy, correct=2.0, abstain=-0.5, wrong=-2.0)


def test_toy_chains_the_stages_in_process(tmp_path, monkeypatch):
    import train.core.cli as core_cli
    from train.visionzero import evaluate, toy

    (tmp_path / "runs/quickstart").mkdir(parents=True)
    (tmp_path / "runs/quickstart/clip_final.pt").write_text("stand-in")
    (tmp_path / "configs/visionzero").mkdir(parents=True)
    for name in ("toy_sft.yaml", "toy_selfplay.yaml"):  # the runner checks that its stage configs exist
        (tmp_path / "configs/visionzero" / name).write_text("stand-in")
    monkeypatch.setattr(toy, "ROOT", tmp_path)
    calls: list = []

    def fake_fit(config, overrides=()):
        calls.append(("fit", config, list(overrides)))
        print(f"fitting {config}")
        return 1.0

    def fake_eval(argv):
        calls.append(("eval", list(argv)))
        out = Path(argv[argv.index("--out") + 1])
        (out / "eval.md").write_text("| table |\n")

    monkeypatch.setattr(core_cli, "fit_stage", fake_fit)
    monkeypatch.setattr(evaluate, "main", fake_eval)
    toy.main(["--out", "vz", "--games", "7", "--", "--trainer.max_steps=3"])
    out = tmp_path / "vz"
    assert calls == [
        ("fit", "configs/visionzero/toy_sft.yaml",
         [f"--model.init_args.lm_path={out / 'tiny_lm'}", f"--model.init_args.export_path={out / 'base_policy'}"]),
        ("fit", "configs/visionzero/toy_selfplay.yaml",
         [f"--model.init_args.policy_path={out / 'base_policy'}",
          f"--model.init_args.export_path={out / 'selfplay_policy'}", "--trainer.max_steps=3"]),
        ("eval", ["--config", "configs/visionzero/toy_selfplay.yaml", "--base", str(out / "base_policy"),
                  "--trained", str(out / "selfplay_policy"), "--games", "7", "--out", str(out)]),
    ]
    assert "fitting configs/visionzero/toy_sft.yaml" in (out / "sft.log").read_text()
    assert "wall time" in (out / "summary.md").read_text()
    # --reuse-base skips the SFT stage when the base policy is complete
    (out / "base_policy").mkdir()
    (out / "base_policy" / "vlm_config.json").write_text("{}")
    calls.clear()
    toy.main(["--out", "vz", "--reuse-base"])
    assert [c[0] for c in calls] == ["fit", "eval"] and calls[0][1] == "configs/visionzero/toy_selfplay.yaml"
