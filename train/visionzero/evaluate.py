"""Evaluation of Vision-Zero self-play: validation or test games, mixed tables against the frozen base, phase plot.

    synthloop visionzero-eval --base runs/visionzero_toy/base_policy \\
        --trained runs/visionzero_toy/selfplay_policy --config configs/visionzero/toy_selfplay.yaml \\
        --out runs/visionzero_toy                 # validation games (choose settings here)
    synthloop visionzero-eval ... --split test    # test games (report once, after the choices are made)

* Games: the first ``--games`` setups of the split's own stream (``SPLIT_KEYS``: one fixed seed key per
  split; sample ``i`` is drawn from ``sample_rng(key, i)``), from the self-play config's game generator
  with its pair source restricted to the split's scenes (``WorldPairs(split="val" | "test")``). A
  scene's split is a function of the scene (``datagen.visionzero.pairs.scene_split``: a hash of its
  objects and exact positions), and the toy configs train on ``split: train`` scenes, so validation,
  test and training games never share a civilians' scene, whatever the seeds (``eval.json`` lists the
  scene keys of the games played: ``game_keys``). Every table plays the SAME setups with the same
  sampling seed (``--seed``) and the config's temperature and generation budgets
  (``model.init_args.generation``).
* Rewards (shown in the transcripts): the self-play config's ``model.init_args.rewards`` section, scored
  by the same :func:`train.visionzero.engine.score_game` as training.
* Tables: base vs base and trained vs trained (spy-identification accuracy = fraction of civilian
  votes naming the spy, N/A and invalid rates, clue-format rate, civilians' majority win rate);
  mixed tables (trained spy vs base civilians, trained civilians vs base spy). The trained policy's
  win rate against the base is the mean of its win rate as spy in the first mixed table and as
  civilians in the second (0.5 when both are the same policy).
* Phase plot: the phase controller's history (``phase_history.json`` next to the trained policy) ->
  ``phase.png``: accuracy / N/A per step, their EMAs, thresholds, and the active phase as bands.

* Intervals: 95% bootstrap intervals over the games (paired across tables; :mod:`train.visionzero.intervals`)
  on spy-identification accuracy, N/A-vote share and win rates; ``per_game`` in ``eval.json`` keeps the
  per-game counts, so ``bench/visionzero_toy.py`` can add the seed bootstrap over several runs. The
  share of training iterations per stage (decision / clue) comes from the phase history.

Writes ``eval.json``, ``eval.md`` and ``eval_transcripts.txt`` for the validation split,
``eval_test.json``, ``eval_test.md`` and ``eval_test_transcripts.txt`` for the test split (each records
its ``split``), and ``phase.png``, into ``--out``.

Only the standard library is imported at module level, so ``--help`` answers at once; torch, the
engine and the game data are imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import positive_int

if TYPE_CHECKING:
    from datagen.visionzero import GameSetup
    from train.visionzero.engine import GameRecord


def load_game_config(config: str | None) -> dict[str, Any]:
    """Game generator, generation and reward settings of a self-play config (no config: the toy recipe).

    From a config, the ``generation`` and ``rewards`` sections of ``model.init_args`` are read as the
    training run read them (:class:`~train.visionzero.config.GenerationConfig`,
    :class:`~train.visionzero.config.RewardConfig`, their defaults for keys the config leaves out);
    ``rewards`` comes back as a plain dict (JSON).
    """
    from dataclasses import asdict

    import yaml

    from train.visionzero.config import GenerationConfig, RewardConfig, coerce

    out = {"source": {"n_objects": [2, 3], "k": 2, "size": 64}, "n_civilians": 4, "rounds": 2,
           "temperature": 1.0, "prompts_path": None, "clue_max_new_tokens": 16, "decision_max_new_tokens": 8,
           "rewards": asdict(RewardConfig())}
    if config is None:
        return out
    cfg = yaml.safe_load(Path(config).read_text())
    m = cfg.get("model", {}).get("init_args", {})
    gen = coerce(GenerationConfig, m.get("generation"), "model.init_args.generation")
    for k in ("temperature", "clue_max_new_tokens", "decision_max_new_tokens"):
        out[k] = getattr(gen, k)
    out["prompts_path"] = m.get("prompts_path", out["prompts_path"])
    out["rewards"] = asdict(coerce(RewardConfig, m.get("rewards"), "model.init_args.rewards"))
    g = cfg.get("data", {}).get("init_args", {}).get("generator", {}).get("init_args", {})
    out["n_civilians"] = g.get("n_civilians", out["n_civilians"])
    out["rounds"] = g.get("rounds", out["rounds"])
    src = g.get("source", {})
    if src.get("class_path", "datagen.visionzero.WorldPairs").endswith("WorldPairs"):
        out["source"] = dict(src.get("init_args", {}))
    return out


# The seed key of each evaluation split's stream (training streams use the configs' data.seed, small
# integers). Disjointness does not rest on these keys: the scene filter (WorldPairs(split=...)) makes it.
SPLIT_KEYS = {"val": 0x5A11DA7E, "test": 0x7E57DA7A}
EVAL_SPLITS = tuple(SPLIT_KEYS)


def result_stem(split: str) -> str:
    """File stem of a split's result files: ``eval`` (validation) or ``eval_test``."""
    return "eval" if split == "val" else f"eval_{split}"


def heldout_setups(gcfg: dict[str, Any], n: int, seed: int | None = None, split: str = "val") -> list[GameSetup]:
    """The first ``n`` games of ``split`` (``"val"`` or ``"test"``; module docstring).

    ``seed``: the stream key (default: ``SPLIT_KEYS[split]``); the scene filter applies either way.
    """
    from datagen.stream import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs

    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    src = dict(gcfg["source"])
    if "n_objects" in src and isinstance(src["n_objects"], list):
        src["n_objects"] = tuple(src["n_objects"])
    src["split"] = split
    key = SPLIT_KEYS[split] if seed is None else int(seed)
    games = GameSetups(WorldPairs(**src), n_civilians=gcfg["n_civilians"], rounds=gcfg["rounds"])
    return [games.setup(sample_rng(key, i), i) for i in range(n)]


def game_key(setup: GameSetup) -> str:
    """The scene key (``datagen.visionzero.pairs.scene_key``) of a game's civilians' scene."""
    from datagen.visionzero.pairs import scene_key

    return scene_key(setup.meta["original_scene"])


def load_policy(path: str, ckpt: str | None = None):
    """An EmbeddingVLM policy from a folder, optionally with the weights of a self-play Lightning checkpoint."""
    from models.io import load_torch_file
    from models.vlm import EmbeddingVLM
    from train.visionzero.policy import EmbeddingVLMPolicy

    vlm = EmbeddingVLM.from_pretrained(path)
    if ckpt is not None:
        state = load_torch_file(ckpt, "Vision-Zero checkpoint")["state_dict"]
        vlm.load_state_dict({k[len("vlm."):]: v for k, v in state.items() if k.startswith("vlm.")})
    vlm.eval()
    return EmbeddingVLMPolicy(vlm)


def ckpt_history(ckpt: str) -> list[dict]:
    from models.io import load_torch_file

    return load_torch_file(ckpt, "Vision-Zero checkpoint")["visionzero"]["phase"]["history"]


def play_table(setups: list[GameSetup], players: dict[str, Any], spy_key: str, civ_key: str,
               gcfg: dict[str, Any], seed: int, batch: int = 64) -> list[GameRecord]:
    """Play every setup with ``spy_key``'s policy as spy and ``civ_key``'s as civilians (same sampling seed).

    Scored with ``gcfg["rewards"]`` (the run's reward settings, :func:`load_game_config`).
    """
    import torch

    from train.visionzero.config import RewardConfig
    from train.visionzero.engine import play_games
    from train.visionzero.policy import generate_fn

    rewards = RewardConfig(**gcfg["rewards"])
    torch.manual_seed(seed)
    fns = {k: generate_fn(p, temperature=gcfg["temperature"], clue={"max_new_tokens": gcfg["clue_max_new_tokens"]},
                          decision={"max_new_tokens": gcfg["decision_max_new_tokens"]})
           for k, p in players.items()}
    records: list[GameRecord] = []
    for i in range(0, len(setups), batch):
        for p in players.values():
            p.clear_cache()
        records += play_games(setups[i:i + batch], fns, lambda s, seat: spy_key if seat == s.spy else civ_key,
                              prompts_path=gcfg["prompts_path"], rewards=rewards)
    return records


def evaluate(base: str, trained: str, config: str | None, n_games: int = 200, seed: int = 4242,
             out: str | None = None, batch: int = 64, trained_ckpt: str | None = None, split: str = "val",
             blank_spy: bool | None = None, n_boot: int = 2000) -> dict[str, Any]:
    """Play the ``split``'s first ``n_games`` games at the four tables (``seed``: rollout sampling seed).

    ``trained_ckpt``: evaluate the weights of a self-play checkpoint (on top of ``base``) instead of
    ``trained``. ``blank_spy``: override the config's ``blank_spy`` (None keeps it).
    """
    import torch

    from train.visionzero.engine import format_transcript, game_stats
    from train.visionzero.intervals import game_outcomes, intervals, phase_shares

    torch.set_grad_enabled(False)
    gcfg = load_game_config(config)
    if blank_spy is not None:
        gcfg["source"] = {**gcfg["source"], "blank_spy": bool(blank_spy)}
    setups = heldout_setups(gcfg, n_games, split=split)
    players = {"base": load_policy(base),
               "trained": load_policy(base, trained_ckpt) if trained_ckpt else load_policy(trained)}
    tables: dict[str, dict[str, float]] = {}
    per_game: dict[str, dict[str, list[int]]] = {}
    transcripts: dict[str, str] = {}
    t0 = time.perf_counter()
    for name, spy, civ in (("base_vs_base", "base", "base"), ("trained_vs_trained", "trained", "trained"),
                           ("trained_spy_vs_base_civilians", "trained", "base"),
                           ("trained_civilians_vs_base_spy", "base", "trained")):
        recs = play_table(setups, players, spy, civ, gcfg, seed, batch)
        st = game_stats(recs)
        st["spy_win_rate"] = 1.0 - st["civilian_win_rate"]
        tables[name] = st
        per_game[name] = game_outcomes(recs)
        transcripts[name] = "\n\n".join(format_transcript(r) for r in recs[:3])
    win = 0.5 * (tables["trained_spy_vs_base_civilians"]["spy_win_rate"]
                 + tables["trained_civilians_vs_base_spy"]["civilian_win_rate"])
    ref = 0.5 * (tables["base_vs_base"]["spy_win_rate"] + tables["base_vs_base"]["civilian_win_rate"])
    hist = Path(trained) / "phase_history.json"
    history = ckpt_history(trained_ckpt) if trained_ckpt else (
        json.loads(hist.read_text())["history"] if hist.is_file() else None)
    result = {"split": split, "split_key": SPLIT_KEYS[split], "n_games": n_games, "seed": seed, "game": gcfg,
              "tables": tables, "win_rate_trained_vs_base": win, "win_rate_base_vs_base": ref,
              "accuracy_gain_points": 100 * (tables["trained_vs_trained"]["accuracy"]
                                             - tables["base_vs_base"]["accuracy"]),
              "intervals": intervals([per_game], n_boot=n_boot),
              "phase_shares": phase_shares(history) if history else None,
              "eval_s": time.perf_counter() - t0,
              "game_keys": [game_key(s) for s in setups], "per_game": per_game}
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        stem = result_stem(split)
        if history:
            plot_phases(history, o / "phase.png")
            result["phase_png"] = str(o / "phase.png")
        (o / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (o / f"{stem}.md").write_text(format_tables(result))
        (o / f"{stem}_transcripts.txt").write_text(f"split: {split}\n\n" + "\n\n".join(
            f"== {k} ==\n{v}" for k, v in transcripts.items()))
    return result


SPLIT_TITLES = {"val": "validation games (settings are chosen on these)",
                "test": "TEST games (report only; choose nothing on these)"}


def format_tables(r: dict[str, Any]) -> str:
    t = r["tables"]
    split = r.get("split", "val")
    spy = "blank spy image (ablation)" if r["game"].get("source", {}).get("blank_spy") else "edited spy image"
    lines = [f"Split: {split} -- {SPLIT_TITLES.get(split, split)}", "",
             f"Games: {r['n_games']} of the {split} split (rollout seed {r['seed']}), "
             f"{r['game']['n_civilians']} civilians + 1 spy, {r['game']['rounds']} rounds, "
             f"temperature {r['game']['temperature']}, {spy}", "",
             "| table | spy-id accuracy | N/A | invalid | clue format ok | civilians win | spy wins |",
             "|---|---|---|---|---|---|---|"]
    for name, s in t.items():
        lines.append(f"| {name} | {100 * s['accuracy']:.1f} | {100 * s['na_rate']:.1f} | "
                     f"{100 * s['invalid_rate']:.1f} | {100 * s['clue_format_ok']:.1f} | "
                     f"{100 * s['civilian_win_rate']:.1f} | {100 * s['spy_win_rate']:.1f} |")
    lines += ["", f"accuracy gain (trained vs base, self-play tables): {r['accuracy_gain_points']:+.1f} points",
              f"win rate of trained vs frozen base (mean of trained-as-spy and trained-as-civilians): "
              f"{100 * r['win_rate_trained_vs_base']:.1f}% (base vs base: {100 * r['win_rate_base_vs_base']:.1f}%)"]
    if r.get("intervals"):
        from train.visionzero.intervals import format_intervals

        lines += ["", format_intervals(r["intervals"]).rstrip()]
    ps = r.get("phase_shares")
    if ps:
        lines += ["", f"training iterations per stage (phase history): decision {100 * ps['decision']:.1f}%, "
                      f"clue {100 * ps['clue']:.1f}% of {int(ps['iterations'])}, {int(ps['switches'])} switches"]
    return "\n".join(lines) + "\n"


def plot_phases(history: list[dict], path: str | Path) -> None:
    """Top: accuracy / N/A per iteration and their EMAs, clue stage as orange bands; bottom: the stage per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.visionzero.intervals import phase_shares

    it = [h["iteration"] for h in history]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    for h in history:
        if h["phase"] == "clue":
            ax.axvspan(h["iteration"] - 1, h["iteration"], color="tab:orange", alpha=0.18, lw=0)
    ax.plot(it, [h["acc"] for h in history], color="tab:blue", alpha=0.35, lw=1, label="accuracy (step)")
    ax.plot(it, [h["acc_ema"] for h in history], color="tab:blue", lw=2, label="accuracy EMA")
    ax.plot(it, [h["na_rate"] for h in history], color="tab:red", alpha=0.35, lw=1, label="N/A rate (step)")
    ax.plot(it, [h["na_ema"] for h in history], color="tab:red", lw=2, label="N/A EMA")
    for y, ls in ((0.9, ":"), (0.6, "--")):
        ax.axhline(y, color="gray", ls=ls, lw=0.8)
    sw = [h["iteration"] for h in history if h["switch"]]
    for x in sw:
        ax.axvline(x, color="black", lw=0.6, alpha=0.5)
    ax.set_ylim(-0.02, 1.02)
    sh = phase_shares(history)
    ax2.step(it, [1 if h["phase"] == "clue" else 0 for h in history], where="pre", color="tab:orange")
    ax2.set_yticks([0, 1], ["decision", "clue"])
    ax2.set_ylim(-0.3, 1.3)
    ax2.set_xlabel(f"iteration (decision {100 * sh['decision']:.0f}% / clue {100 * sh['clue']:.0f}% of "
                   f"{int(sh['iterations'])} iterations)")
    ax.set_title("Iterative-SPO phases (orange = clue stage, white = decision stage; "
                 "dotted 0.9 = to-clue acc, dashed 0.6 = to-decision acc)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, prog="synthloop visionzero-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="runs/visionzero_toy/base_policy")
    ap.add_argument("--trained", default="runs/visionzero_toy/selfplay_policy")
    ap.add_argument("--config", default="configs/visionzero/toy_selfplay.yaml")
    ap.add_argument("--games", type=positive_int, default=200)
    ap.add_argument("--split", choices=EVAL_SPLITS, default="val",
                    help="which games: val (default; choose settings here) or test (report only)")
    ap.add_argument("--seed", type=int, default=4242, help="rollout sampling seed (the games are fixed by --split)")
    ap.add_argument("--blank-spy", action="store_true",
                    help="ablation: the spy sees a blank image (overrides the config's blank_spy)")
    ap.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap replicates of the intervals")
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--out", default="runs/visionzero_toy")
    ap.add_argument("--trained-ckpt", default=None, help="a self-play Lightning checkpoint instead of --trained")
    a = ap.parse_args(argv)
    if not Path(a.config).is_file():
        ap.error(f"--config {a.config}: no such file")
    needed = [("--base", a.base)] + ([("--trained-ckpt", a.trained_ckpt)] if a.trained_ckpt else [("--trained", a.trained)])
    for opt, path in needed:
        if not Path(path).exists():
            ap.error(f"{opt} {path}: no such policy (train one with `synthloop visionzero-toy`, or name its folder)")
    r = evaluate(a.base, a.trained, a.config, a.games, a.seed, a.out, a.batch, a.trained_ckpt, split=a.split,
                 blank_spy=True if a.blank_spy else None, n_boot=a.n_boot)
    stem = result_stem(a.split)
    print(format_tables(r))
    print(f"eval wall time: {r['eval_s']:.0f} s; {a.split} split written to {a.out}/{stem}.md, {stem}.json" +
          (f", {r['phase_png']}" if "phase_png" in r else ""))


if __name__ == "__main__":
    main()


__all__ = ["EVAL_SPLITS", "SPLIT_KEYS", "evaluate", "format_tables", "game_key", "heldout_setups", "load_game_config",
           "main", "play_table", "plot_phases", "result_stem"]
