"""Evaluation of Vision-Zero self-play: held-out games, mixed tables against the frozen base, phase plot.

    synthloop visionzero-eval --base runs/visionzero_toy/base_policy \\
        --trained runs/visionzero_toy/selfplay_policy --config configs/visionzero/toy_selfplay.yaml \\
        --out runs/visionzero_toy

* Held-out set: ``--games`` setups drawn from the self-play config's game generator with a seed of
  their own (``--seed``; the training stream uses ``data.seed``, whose sample indices are hashed with it,
  so no held-out game is a training game). Every table plays the SAME setups with the same sampling
  seed and the config's temperature and generation budgets (``model.init_args.generation``).
* Rewards (shown in the transcripts): the self-play config's ``model.init_args.rewards`` section, scored
  by the same :func:`train.visionzero.engine.score_game` as training.
* Tables: base vs base and trained vs trained (spy-identification accuracy = fraction of civilian
  votes naming the spy, N/A and invalid rates, clue-format rate, civilians' majority win rate);
  mixed tables (trained spy vs base civilians, trained civilians vs base spy). The trained policy's
  win rate against the base is the mean of its win rate as spy in the first mixed table and as
  civilians in the second (0.5 when both are the same policy).
* Phase plot: the phase controller's history (``phase_history.json`` next to the trained policy) ->
  ``phase.png``: accuracy / N/A per step, their EMAs, thresholds, and the active phase as bands.

Writes ``eval.json`` and ``eval.md`` (and ``phase.png``) into ``--out``.

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


def heldout_setups(gcfg: dict[str, Any], n: int, seed: int) -> list[GameSetup]:
    from datagen.stream import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs

    src = dict(gcfg["source"])
    if "n_objects" in src and isinstance(src["n_objects"], list):
        src["n_objects"] = tuple(src["n_objects"])
    games = GameSetups(WorldPairs(**src), n_civilians=gcfg["n_civilians"], rounds=gcfg["rounds"])
    return [games.setup(sample_rng(seed, i), i) for i in range(n)]


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
             out: str | None = None, batch: int = 64, trained_ckpt: str | None = None) -> dict[str, Any]:
    """``trained_ckpt``: evaluate the weights of a self-play checkpoint (on top of ``base``) instead of ``trained``."""
    import torch

    from train.visionzero.engine import format_transcript, game_stats

    torch.set_grad_enabled(False)
    gcfg = load_game_config(config)
    setups = heldout_setups(gcfg, n_games, seed)
    players = {"base": load_policy(base),
               "trained": load_policy(base, trained_ckpt) if trained_ckpt else load_policy(trained)}
    tables: dict[str, dict[str, float]] = {}
    transcripts: dict[str, str] = {}
    t0 = time.perf_counter()
    for name, spy, civ in (("base_vs_base", "base", "base"), ("trained_vs_trained", "trained", "trained"),
                           ("trained_spy_vs_base_civilians", "trained", "base"),
                           ("trained_civilians_vs_base_spy", "base", "trained")):
        recs = play_table(setups, players, spy, civ, gcfg, seed, batch)
        st = game_stats(recs)
        st["spy_win_rate"] = 1.0 - st["civilian_win_rate"]
        tables[name] = st
        transcripts[name] = "\n\n".join(format_transcript(r) for r in recs[:3])
    win = 0.5 * (tables["trained_spy_vs_base_civilians"]["spy_win_rate"]
                 + tables["trained_civilians_vs_base_spy"]["civilian_win_rate"])
    ref = 0.5 * (tables["base_vs_base"]["spy_win_rate"] + tables["base_vs_base"]["civilian_win_rate"])
    result = {"n_games": n_games, "seed": seed, "game": gcfg, "tables": tables,
              "win_rate_trained_vs_base": win, "win_rate_base_vs_base": ref,
              "accuracy_gain_points": 100 * (tables["trained_vs_trained"]["accuracy"]
                                             - tables["base_vs_base"]["accuracy"]),
              "eval_s": time.perf_counter() - t0}
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "eval.json").write_text(json.dumps(result, indent=1))
        (o / "eval.md").write_text(format_tables(result))
        (o / "eval_transcripts.txt").write_text("\n\n".join(f"== {k} ==\n{v}" for k, v in transcripts.items()))
        hist = Path(trained) / "phase_history.json"
        history = ckpt_history(trained_ckpt) if trained_ckpt else (
            json.loads(hist.read_text())["history"] if hist.is_file() else None)
        if history:
            plot_phases(history, o / "phase.png")
            result["phase_png"] = str(o / "phase.png")
        (o / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def format_tables(r: dict[str, Any]) -> str:
    t = r["tables"]
    lines = [f"Held-out games: {r['n_games']} (seed {r['seed']}), "
             f"{r['game']['n_civilians']} civilians + 1 spy, {r['game']['rounds']} rounds, "
             f"temperature {r['game']['temperature']}", "",
             "| table | spy-id accuracy | N/A | invalid | clue format ok | civilians win | spy wins |",
             "|---|---|---|---|---|---|---|"]
    for name, s in t.items():
        lines.append(f"| {name} | {100 * s['accuracy']:.1f} | {100 * s['na_rate']:.1f} | "
                     f"{100 * s['invalid_rate']:.1f} | {100 * s['clue_format_ok']:.1f} | "
                     f"{100 * s['civilian_win_rate']:.1f} | {100 * s['spy_win_rate']:.1f} |")
    lines += ["", f"accuracy gain (trained vs base, self-play tables): {r['accuracy_gain_points']:+.1f} points",
              f"win rate of trained vs frozen base (mean of trained-as-spy and trained-as-civilians): "
              f"{100 * r['win_rate_trained_vs_base']:.1f}% (base vs base: {100 * r['win_rate_base_vs_base']:.1f}%)"]
    return "\n".join(lines) + "\n"


def plot_phases(history: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
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
    ax.set_xlabel("iteration")
    ax.set_ylim(-0.02, 1.02)
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
    ap.add_argument("--seed", type=int, default=4242)
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
    r = evaluate(a.base, a.trained, a.config, a.games, a.seed, a.out, a.batch, a.trained_ckpt)
    print(format_tables(r))
    print(f"eval wall time: {r['eval_s']:.0f} s; written to {a.out}/eval.md, eval.json" +
          (f", {r['phase_png']}" if "phase_png" in r else ""))


if __name__ == "__main__":
    main()


__all__ = ["evaluate", "format_tables", "heldout_setups", "load_game_config", "main", "play_table", "plot_phases"]
