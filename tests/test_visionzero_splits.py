"""Vision-Zero evaluation splits and intervals: validation / test / training games are disjoint by
construction, ``--split`` reaches the games and the result files, the bootstrap intervals behave on known
inputs (coverage, pairing, seeds), and the phase shares are counted from the controller's history."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPTS = str(ROOT / "configs/visionzero/prompts/game_toy.yaml")
TOY_CONFIGS = ("toy_selfplay.yaml", "toy_sft.yaml")


# --- splits ---------------------------------------------------------------------------------------
def _image_hash(im) -> str:
    return hashlib.sha256(im.tobytes()).hexdigest()


def _training_setups(n: int, data_seed: int):
    """The first ``n`` games of the toy self-play config's training stream (its source, its data.seed)."""
    from datagen.generator import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs

    cfg = yaml.safe_load((ROOT / "configs/visionzero/toy_selfplay.yaml").read_text())
    g = cfg["data"]["init_args"]["generator"]["init_args"]
    src = dict(g["source"]["init_args"])
    src["n_objects"] = tuple(src["n_objects"])
    games = GameSetups(WorldPairs(**src), n_civilians=g["n_civilians"], rounds=g["rounds"])
    return [games.setup(sample_rng(data_seed, i), i) for i in range(n)]


def test_toy_configs_default_to_edited_spies_on_training_scenes():
    for name in TOY_CONFIGS:
        cfg = yaml.safe_load((ROOT / "configs/visionzero" / name).read_text())
        src = cfg["data"]["init_args"]["generator"]["init_args"]["source"]["init_args"]
        assert src["blank_spy"] is False and src["split"] == "train" and src["k"] == 2, name


def test_scene_split_is_a_function_of_the_scene():
    from datagen.visionzero.pairs import SPLIT_FRACTIONS, WorldPairs, scene_key, scene_split
    from datagen.world import sample_scene

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, (2, 3)) for _ in range(3000)]
    splits = [scene_split(s) for s in scenes]
    assert [scene_split(s.to_dict()) for s in scenes[:50]] == splits[:50]  # Scene or its dict: same answer
    assert scene_key(scenes[0]) == scene_key(json.loads(json.dumps(scenes[0].to_dict())))  # survives JSON
    for name, frac in SPLIT_FRACTIONS.items():
        assert abs(splits.count(name) / len(splits) - frac) < 0.03, name
    with pytest.raises(ValueError, match="split"):
        WorldPairs(split="validation")
    # no split: the original draw, unchanged
    a, b = WorldPairs(size=32).pair(np.random.default_rng(5)), WorldPairs(size=32).pair(np.random.default_rng(5))
    assert "split" not in a["meta"] and a["meta"] == b["meta"]
    for split in ("train", "val", "test"):
        for blank in (False, True):
            src = WorldPairs(size=32, n_objects=(2, 3), split=split, blank_spy=blank)
            pairs = [src.pair(np.random.default_rng(i)) for i in range(20)]
            assert all(scene_split(p["meta"]["original_scene"]) == split == p["meta"]["split"] for p in pairs)
            again = src.pair(np.random.default_rng(3))
            assert again["meta"] == pairs[3]["meta"] and again["original"].tobytes() == pairs[3]["original"].tobytes()
            if not blank:
                assert pairs[0]["edit"]["kind"] != "blank"


def test_validation_test_and_training_games_are_disjoint():
    """No validation game shares its civilians' scene (nor its image, nor its setup) with a test or a
    training game; this holds even when an evaluation stream uses the training stream's own seed key."""
    from train.visionzero.evaluate import SPLIT_KEYS, game_key, heldout_setups, load_game_config

    g = load_game_config(str(ROOT / "configs/visionzero/toy_selfplay.yaml"))
    assert g["source"]["blank_spy"] is False
    val, test = heldout_setups(g, 200, split="val"), heldout_setups(g, 200, split="test")
    assert SPLIT_KEYS["val"] != SPLIT_KEYS["test"]
    data_seed = yaml.safe_load((ROOT / "configs/visionzero/toy_selfplay.yaml").read_text())["data"]["init_args"]["seed"]
    train = _training_setups(600, data_seed)
    # the adversarial case: a validation stream keyed with the training seed draws the same random numbers
    val_same_key = heldout_setups(g, 200, seed=data_seed, split="val")
    sets = {"val": val, "test": test, "train": train, "val_same_key": val_same_key}
    scene = {k: {game_key(s) for s in v} for k, v in sets.items()}
    image = {k: {_image_hash(s.original) for s in v} for k, v in sets.items()}
    assert len(scene["val"]) == 200 and len(scene["test"]) == 200  # no repeats within a split either
    for a, b in (("val", "test"), ("val", "train"), ("test", "train"), ("val_same_key", "train")):
        assert not scene[a] & scene[b], (a, b)
        assert not image[a] & image[b], (a, b)
    assert all(s.meta["split"] == "val" for s in val) and all(s.meta["split"] == "test" for s in test)
    assert all(s.meta["split"] == "train" for s in train)
    # the evaluation set is fixed: the same games every time
    assert [game_key(s) for s in heldout_setups(g, 5, split="val")] == [game_key(s) for s in val[:5]]


# --- --split plumbing on a tiny policy --------------------------------------------------------------
def _tiny_policy(tmp_path) -> Path:
    from datagen.visionzero.sft import GameSFTSamples
    from models.tiny_lm import build_tiny_lm
    from models.vlm import build_vlm

    texts = GameSFTSamples(n_civilians=2, rounds=1, prompts_path=TOY_PROMPTS).corpus(20)
    build_tiny_lm(tmp_path / "lm", texts=texts, hidden=16, layers=1, heads=2, max_positions=256)
    build_vlm(str(tmp_path / "lm"), 32, num_visual_tokens=1, token_mode="split",
              vision_tower={"type": "open_clip", "model_name": "synthloop-micro-vit32"}).save_pretrained(tmp_path / "p")
    return tmp_path / "p"


def _history(n: int = 30, acc: float = 0.0) -> list[dict]:
    from train.visionzero.phase import PhaseController

    pc = PhaseController()
    for _ in range(n):
        pc.step(acc, 0.0)
    return pc.history


def test_eval_split_flag_picks_the_games_and_names_the_files(tmp_path):
    from datagen.visionzero.pairs import scene_split
    from train.visionzero import evaluate

    policy = _tiny_policy(tmp_path)
    (policy / "phase_history.json").write_text(json.dumps({"history": _history()}))
    cfg = {"model": {"class_path": "train.visionzero.VisionZeroSelfPlay", "init_args": {
               "prompts_path": TOY_PROMPTS, "generation": {"clue_max_new_tokens": 3, "decision_max_new_tokens": 3}}},
           "data": {"init_args": {"generator": {"init_args": {
               "n_civilians": 2, "rounds": 1,
               "source": {"init_args": {"size": 32, "n_objects": [2, 3], "blank_spy": False, "split": "train"}}}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    common = ["--config", str(tmp_path / "c.yaml"), "--base", str(policy), "--trained", str(policy),
              "--games", "3", "--out", str(out), "--n-boot", "50"]
    evaluate.main(common)  # default: validation
    evaluate.main(common + ["--split", "test"])
    val, test = json.loads((out / "eval.json").read_text()), json.loads((out / "eval_test.json").read_text())
    assert (val["split"], test["split"]) == ("val", "test")
    assert len(val["game_keys"]) == 3 and not set(val["game_keys"]) & set(test["game_keys"])
    g = evaluate.load_game_config(str(tmp_path / "c.yaml"))
    for split, r in (("val", val), ("test", test)):
        setups = evaluate.heldout_setups(g, 3, split=split)
        assert r["game_keys"] == [evaluate.game_key(s) for s in setups]
        assert {scene_split(s.meta["original_scene"]) for s in setups} == {split}
        assert set(r["per_game"]) == set(r["tables"]) and all(len(v["votes"]) == 3 for v in r["per_game"].values())
        # the per-game counts reproduce the pooled table figures
        for t, pg in r["per_game"].items():
            assert sum(pg["correct"]) / max(sum(pg["votes"]), 1) == pytest.approx(r["tables"][t]["accuracy"])
            assert sum(pg["civ_win"]) / 3 == pytest.approx(r["tables"][t]["civilian_win_rate"])
        iv = r["intervals"]
        assert iv["_n"]["n_runs"] == 1 and iv["_n"]["n_games"] == 3
        # every interval brackets its point estimate
        for k in ("base_vs_base/accuracy", "accuracy_gain", "win_rate_trained_vs_base"):
            assert iv[k]["lo"] <= iv[k]["point"] + 1e-9 and iv[k]["point"] <= iv[k]["hi"] + 1e-9
        assert r["phase_shares"] == {"iterations": 30.0, "decision": 25 / 30, "clue": 5 / 30, "switches": 2.0}
    assert (out / "eval.md").read_text().startswith("Split: val")
    assert (out / "eval_test.md").read_text().startswith("Split: test")
    assert "95% intervals" in (out / "eval_test.md").read_text()
    assert (out / "eval_test_transcripts.txt").read_text().startswith("split: test")
    assert (out / "phase.png").stat().st_size > 1000
    # --blank-spy overrides the config's source
    r = evaluate.evaluate(str(policy), str(policy), str(tmp_path / "c.yaml"), 2, blank_spy=True, n_boot=20)
    assert r["game"]["source"]["blank_spy"] is True and "ablation" in evaluate.format_tables(r)
    with pytest.raises(SystemExit) as e:
        evaluate.main(common + ["--split", "train"])
    assert e.value.code == 2


def test_toy_evaluates_on_val_and_on_test_only_when_asked(tmp_path, monkeypatch):
    import train.core.cli as core_cli
    from train.visionzero import evaluate, toy

    (tmp_path / "runs/quickstart").mkdir(parents=True)
    (tmp_path / "runs/quickstart/clip_final.pt").write_text("stand-in")
    (tmp_path / "configs/visionzero").mkdir(parents=True)
    for name in TOY_CONFIGS:
        (tmp_path / "configs/visionzero" / name).write_text("stand-in")
    monkeypatch.setattr(toy, "ROOT", tmp_path)
    calls: list = []
    monkeypatch.setattr(core_cli, "fit_stage", lambda config, overrides=(): calls.append(("fit", config, list(overrides))))

    def fake_eval(argv):
        calls.append(("eval", list(argv)))
        out = Path(argv[argv.index("--out") + 1])
        split = argv[argv.index("--split") + 1] if "--split" in argv else "val"
        (out / evaluate.result_stem(split)).with_suffix(".md").write_text(f"Split: {split}\n")

    monkeypatch.setattr(evaluate, "main", fake_eval)
    toy.main(["--games", "4"])
    assert [c[0] for c in calls] == ["fit", "fit", "eval"] and "--split" not in calls[2][1]
    assert "Split: test" not in (tmp_path / "runs/visionzero_toy/summary.md").read_text()
    calls.clear()
    toy.main(["--games", "4", "--report-test", "--blank-spy"])
    out = tmp_path / "runs/visionzero_toy_blankspy"  # the ablation gets its own folder
    flag = f"{toy.SOURCE_ARGS}.blank_spy=true"
    assert [c[0] for c in calls] == ["fit", "fit", "eval", "eval"]
    assert flag in calls[0][2] and flag in calls[1][2]
    assert calls[1][2][0] == f"--model.init_args.policy_path={out / 'base_policy'}"
    assert calls[2][1][-1] == "--blank-spy" and calls[3][1][-2:] == ["--split", "test"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("ABLATION: blank spy") and "Split: val" in summary and "Split: test" in summary


# --- intervals on known inputs ---------------------------------------------------------------------
def _table(correct, votes=None, na=None, civ_win=None):
    correct = np.asarray(correct)
    votes = np.full(len(correct), 4) if votes is None else np.asarray(votes)
    return {"votes": votes.tolist(), "correct": correct.tolist(),
            "na": (np.zeros(len(correct), int) if na is None else np.asarray(na)).tolist(),
            "invalid": [0] * len(correct),
            "civ_win": ((correct * 2 > votes).astype(int) if civ_win is None else np.asarray(civ_win)).tolist()}


def test_interval_coverage_over_games_is_about_95_percent():
    from train.visionzero.intervals import bootstrap, interval

    p, G, trials, hits = 0.3, 120, 300, 0
    rng = np.random.default_rng(0)
    for t in range(trials):
        run = {"base_vs_base": _table(rng.binomial(4, p, size=G))}
        lo, hi = interval(bootstrap([run], n_boot=400, seed=t)["base_vs_base/accuracy"])
        hits += lo <= p <= hi
    assert 0.89 <= hits / trials <= 0.99, hits / trials


def test_paired_difference_cancels_the_game_noise():
    from train.visionzero.intervals import bootstrap, interval, intervals

    rng = np.random.default_rng(1)
    G = 100
    base = np.where(rng.random(G) < 0.5, 4, 0)  # games are all-easy or all-hard: large game noise
    trained = base.copy()
    trained[np.flatnonzero(base == 0)[:8]] = 4  # trained fixes 8 hard games, breaks none
    run = {"base_vs_base": _table(base), "trained_vs_trained": _table(trained)}
    iv = intervals([run], n_boot=2000)
    gain = iv["accuracy_gain"]
    assert gain["point"] == pytest.approx(8 / G)
    assert gain["lo"] > 0  # paired: the gain is clearly positive ...
    reps_b = bootstrap([{"base_vs_base": run["base_vs_base"]}], 2000, seed=1)["base_vs_base/accuracy"]
    reps_t = bootstrap([{"trained_vs_trained": run["trained_vs_trained"]}], 2000, seed=2)["trained_vs_trained/accuracy"]
    lo_u, hi_u = interval(reps_t - reps_b)
    assert lo_u < 0 < hi_u  # ... while unpaired (independent game draws) it is not distinguishable from 0
    assert gain["hi"] - gain["lo"] < 0.5 * (hi_u - lo_u)
    # identical tables: the paired difference is exactly 0 in every replicate
    same = {"base_vs_base": _table(base), "trained_vs_trained": _table(base)}
    assert np.all(bootstrap([same], 200)["accuracy_gain"] == 0)


def test_win_rates_na_share_and_seeds():
    from train.visionzero.intervals import format_intervals, intervals

    G = 50
    ones, zeros = np.ones(G, int), np.zeros(G, int)
    run = {"base_vs_base": _table(2 * ones, na=ones, civ_win=zeros),
           "trained_vs_trained": _table(3 * ones, na=zeros, civ_win=ones),
           "trained_spy_vs_base_civilians": _table(zeros, civ_win=zeros),   # trained spy always wins
           "trained_civilians_vs_base_spy": _table(4 * ones, civ_win=ones)}  # trained civilians always win
    iv = intervals([run], n_boot=300)
    assert iv["win_rate_trained_vs_base"] == {"point": 1.0, "lo": 1.0, "hi": 1.0}
    assert iv["base_vs_base/na_rate"]["point"] == 0.25 and iv["na_rate_change"]["point"] == -0.25
    assert iv["base_vs_base/spy_win_rate"]["point"] == 1.0
    assert "win rate of trained vs frozen base" in format_intervals(iv)
    # three seeds that disagree: the seed part widens the interval; the point is the mean over seeds
    rng = np.random.default_rng(3)
    runs = [{"base_vs_base": _table(rng.binomial(4, p, size=G))} for p in (0.2, 0.4, 0.6)]
    one = intervals(runs[1:2], n_boot=1000)["base_vs_base/accuracy"]
    three = intervals(runs, n_boot=1000)["base_vs_base/accuracy"]
    assert three["point"] == pytest.approx(np.mean([sum(r["base_vs_base"]["correct"]) / (4 * G) for r in runs]))
    assert three["hi"] - three["lo"] > 1.3 * (one["hi"] - one["lo"])
    with pytest.raises(ValueError, match="same games"):
        intervals([runs[0], {"base_vs_base": _table(np.ones(G + 1, int))}])


def test_phase_shares_from_the_controllers_history():
    from train.visionzero.intervals import phase_share_intervals, phase_shares
    from train.visionzero.phase import PhaseController

    # acc 0 forever: decision until patience (20), clue until K_min (5) says "too hard", decision again
    assert phase_shares(_history(30)) == {"iterations": 30.0, "decision": 25 / 30, "clue": 5 / 30, "switches": 2.0}
    pc = PhaseController(mode="alternate")
    for _ in range(10):
        pc.step(0.5, 0.0)
    assert phase_shares(pc.history)["clue"] == 0.5
    iv = phase_share_intervals([_history(30), _history(20), pc.history], n_boot=500)
    assert iv["decision"]["point"] == pytest.approx((25 / 30 + 1.0 + 0.5) / 3)
    assert iv["decision"]["lo"] <= iv["decision"]["point"] <= iv["decision"]["hi"]
    with pytest.raises(ValueError):
        phase_shares([])


def test_bench_summarises_seeds_with_intervals_and_a_phase_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_visionzero_toy", ROOT / "bench/visionzero_toy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    keys = [f"k{i}" for i in range(40)]
    for s in (0, 1, 2):
        d = tmp_path / f"seed{s}"
        (d / "selfplay_policy").mkdir(parents=True)
        per_game = {t: _table(rng.binomial(4, 0.3 + 0.1 * (t == "trained_vs_trained"), size=40))
                    for t in ("base_vs_base", "trained_vs_trained", "trained_spy_vs_base_civilians",
                              "trained_civilians_vs_base_spy")}
        (d / "eval.json").write_text(json.dumps({"split": "val", "game_keys": keys, "per_game": per_game}))
        (d / "selfplay_policy/phase_history.json").write_text(json.dumps({"history": _history(30 + s)}))
    text = bench.summarise(tmp_path, [0, 1, 2], "val", n_boot=200)
    assert "3 runs (seeds)" in text and "training iterations per stage" in text
    assert json.loads((tmp_path / "intervals.json").read_text())["intervals"]["_n"]["n_runs"] == 3
    assert (tmp_path / "phase_seeds.png").stat().st_size > 1000
    (tmp_path / "seed2/eval.json").write_text(json.dumps({"split": "val", "game_keys": keys[::-1], "per_game": {}}))
    with pytest.raises(ValueError, match="other games"):
        bench.summarise(tmp_path, [0, 1, 2], "val", n_boot=50)
