"""95% intervals for the Vision-Zero evaluation tables: bootstrap over games and training seeds.

An evaluation (``synthloop visionzero-eval``) plays one fixed set of games (the validation or the test
split) at four tables; every table plays the SAME games. It records, per table and per game, the number
of civilian votes, how many named the spy, how many were N/A or invalid, and whether the civilians won
(:func:`game_outcomes`, stored under ``per_game`` in ``eval.json``). A figure in a table has two sources
of noise: which games the split happened to draw, and which training seed ran. Each bootstrap
replicate (:func:`bootstrap`), as :mod:`train.gift.intervals` does for the continual tables:

1. draws the runs (training seeds) with replacement (``S`` of the ``S`` runs);
2. draws the games with replacement: ONE draw per replicate, used for every table and every run (the
   games are paired across tables, trained vs base, and across seeds);
3. recomputes every run's table metrics on the drawn games (accuracy and N/A share are pooled over
   the drawn games' votes, as :func:`train.visionzero.engine.game_stats`; win rates are means over the
   drawn games) and averages them over the drawn runs.

Paired comparisons (trained minus base: accuracy gain, N/A change; the trained policy's win rate
against the frozen base) are computed inside each replicate, so the shared game and seed noise cancels.
The interval is the 2.5th-97.5th percentile of the replicates (:func:`train.gift.intervals.interval`).
With one run the interval covers the games only (``n_runs`` says so in the outputs).

Also here: :func:`phase_shares`, the share of training iterations per stage (decision vs clue) from the
phase controller's history (``phase_history.json``), with a seed interval over several runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from train.gift.intervals import interval

TABLES = ("base_vs_base", "trained_vs_trained", "trained_spy_vs_base_civilians", "trained_civilians_vs_base_spy")
FIELDS = ("votes", "correct", "na", "invalid", "civ_win")
TABLE_METRICS = ("accuracy", "na_rate", "invalid_rate", "civilian_win_rate", "spy_win_rate")
PAIRED = ("accuracy_gain", "na_rate_change", "win_rate_trained_vs_base")

__all__ = ["FIELDS", "PAIRED", "TABLES", "TABLE_METRICS", "bootstrap", "game_outcomes", "interval", "intervals",
           "phase_shares", "phase_share_intervals", "point_estimates"]


def game_outcomes(records) -> dict[str, list[int]]:
    """Per-game counts of a table's :class:`~train.visionzero.engine.GameRecord` list (JSON-able)."""
    from datagen.visionzero import civilians_win

    return {"votes": [len(r.votes) for r in records], "correct": [r.n_correct for r in records],
            "na": [r.n_na for r in records], "invalid": [r.n_invalid for r in records],
            "civ_win": [int(civilians_win(r.votes, r.setup.spy, r.setup.n_players)) for r in records]}


def _stack(runs: Sequence[Mapping[str, Mapping[str, Sequence[int]]]]) -> dict[str, dict[str, np.ndarray]]:
    """``{table: {field: (S, G) array}}``; every run must hold every table with the same number of games."""
    if not runs:
        raise ValueError("no runs to bootstrap")
    tables = [t for t in TABLES if t in runs[0]] or list(runs[0])
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in tables:
        out[t] = {}
        for f in FIELDS:
            rows = []
            for s, run in enumerate(runs):
                if t not in run:
                    raise ValueError(f"run {s} has no table {t!r}")
                rows.append(np.asarray(run[t][f], dtype=np.float64))
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"table {t!r}: runs played different numbers of games "
                                 f"({[len(r) for r in rows]}); paired intervals need the same games")
            out[t][f] = np.stack(rows)
    return out


def _metrics(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Table metrics from counts summed over games (``c[field]``: sums; ``c["games"]``: game counts)."""
    votes = np.maximum(c["votes"], 1.0)
    civ = c["civ_win"] / np.maximum(c["games"], 1.0)
    return {"accuracy": c["correct"] / votes, "na_rate": c["na"] / votes, "invalid_rate": c["invalid"] / votes,
            "civilian_win_rate": civ, "spy_win_rate": 1.0 - civ}


def _paired(m: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    if "trained_vs_trained" in m and "base_vs_base" in m:
        out["accuracy_gain"] = m["trained_vs_trained"]["accuracy"] - m["base_vs_base"]["accuracy"]
        out["na_rate_change"] = m["trained_vs_trained"]["na_rate"] - m["base_vs_base"]["na_rate"]
    if "trained_spy_vs_base_civilians" in m and "trained_civilians_vs_base_spy" in m:
        out["win_rate_trained_vs_base"] = 0.5 * (m["trained_spy_vs_base_civilians"]["spy_win_rate"]
                                                 + m["trained_civilians_vs_base_spy"]["civilian_win_rate"])
    return out


def _flatten(m: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    flat = {f"{t}/{k}": v for t, d in m.items() for k, v in d.items()}
    flat.update(_paired(m))
    return flat


def point_estimates(runs: Sequence[Mapping[str, Mapping[str, Sequence[int]]]]) -> dict[str, float]:
    """Mean over runs of each run's metrics on all its games (no resampling): ``{"table/metric" | paired: v}``."""
    x = _stack(runs)
    m = {t: _metrics({**{f: a.sum(-1) for f, a in d.items()}, "games": np.full(len(runs), d["votes"].shape[1])})
         for t, d in x.items()}
    return {k: float(v.mean()) for k, v in _flatten(m).items()}


def bootstrap(runs: Sequence[Mapping[str, Mapping[str, Sequence[int]]]], n_boot: int = 2000,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Replicates ``{"table/metric" | paired name: (n_boot,) array}`` (module docstring).

    ``runs``: one entry per training seed, each ``{table: game_outcomes(...)}`` on the same games in
    the same order (game ``g`` of every run and table is the same setup: the draws are paired).
    """
    x = _stack(runs)
    S = len(runs)
    G = next(iter(x.values()))["votes"].shape[1]
    if any(d["votes"].shape[1] != G for d in x.values()):
        raise ValueError("tables played different numbers of games")
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, S, size=(n_boot, S))
    game_draw = rng.integers(0, G, size=(n_boot, G))
    # multiplicity of each game in each replicate: (n_boot, G); sums over drawn games = counts @ weights
    weights = np.zeros((n_boot, G))
    np.add.at(weights, (np.repeat(np.arange(n_boot), G), game_draw.ravel()), 1.0)
    m = {}
    for t, d in x.items():
        sums = {f: a @ weights.T for f, a in d.items()}  # (S, n_boot)
        sums["games"] = np.full((S, n_boot), float(G))
        per_run = _metrics(sums)  # (S, n_boot) each
        m[t] = {k: np.take_along_axis(v.T, seed_draw, axis=1).mean(1) for k, v in per_run.items()}
    return _flatten(m)


def intervals(runs: Sequence[Mapping[str, Mapping[str, Sequence[int]]]], n_boot: int = 2000,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """``{name: {"point", "lo", "hi"}}``: point estimate (:func:`point_estimates`) and 95% bootstrap interval,
    plus ``n_runs`` / ``n_games`` under the key ``"_n"``."""
    pts = point_estimates(runs)
    reps = bootstrap(runs, n_boot, seed)
    out: dict[str, dict[str, float]] = {}
    for k, v in reps.items():
        lo, hi = interval(v)
        out[k] = {"point": pts[k], "lo": lo, "hi": hi}
    first = next(iter(runs[0].values()))
    out["_n"] = {"n_runs": float(len(runs)), "n_games": float(len(first["votes"])), "n_boot": float(n_boot)}
    return out


def phase_shares(history: Sequence[Mapping]) -> dict[str, float]:
    """Share of training iterations per stage, from :class:`~train.visionzero.phase.PhaseController` ``history``
    (one record per iteration, ``phase`` = the stage that iteration trained), and the number of switches."""
    n = len(history)
    if n == 0:
        raise ValueError("empty phase history")
    clue = sum(1 for h in history if h["phase"] == "clue")
    return {"iterations": float(n), "decision": (n - clue) / n, "clue": clue / n,
            "switches": float(sum(1 for h in history if h.get("switch")))}


def phase_share_intervals(histories: Sequence[Sequence[Mapping]], n_boot: int = 2000,
                          seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean decision / clue share over runs with a 95% bootstrap interval over the runs (seeds)."""
    shares = np.array([[phase_shares(h)["decision"], phase_shares(h)["clue"]] for h in histories])
    rng = np.random.default_rng(seed)
    reps = shares[rng.integers(0, len(shares), size=(n_boot, len(shares)))].mean(1)  # (n_boot, 2)
    out = {}
    for j, name in enumerate(("decision", "clue")):
        lo, hi = interval(reps[:, j])
        out[name] = {"point": float(shares[:, j].mean()), "lo": lo, "hi": hi}
    out["_n"] = {"n_runs": float(len(histories))}
    return out


def format_intervals(iv: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A markdown table of :func:`intervals` (percent)."""
    n = iv["_n"]
    src = ("games only (one run)" if n["n_runs"] == 1 else f"{int(n['n_runs'])} runs (seeds) and the games")
    lines = ([title, ""] if title else []) + [
        f"95% intervals: bootstrap over {src}, {int(n['n_games'])} games, {int(n['n_boot'])} replicates; "
        "games paired across tables (trained vs base on the same games)", "",
        "| table | spy-id accuracy | N/A-vote share | civilians win | spy wins |", "|---|---|---|---|---|"]
    f = lambda k: f"{100 * iv[k]['point']:.1f} [{100 * iv[k]['lo']:.1f}, {100 * iv[k]['hi']:.1f}]"  # noqa: E731
    for t in TABLES:
        if f"{t}/accuracy" in iv:
            lines.append(f"| {t} | {f(t + '/accuracy')} | {f(t + '/na_rate')} | {f(t + '/civilian_win_rate')} | "
                         f"{f(t + '/spy_win_rate')} |")
    lines.append("")
    names = {"accuracy_gain": "accuracy gain, trained - base (points)",
             "na_rate_change": "N/A-share change, trained - base (points)",
             "win_rate_trained_vs_base": "win rate of trained vs frozen base (%; 50 = no better)"}
    for k, label in names.items():
        if k in iv:
            lines.append(f"- {label}: {f(k)}")
    return "\n".join(lines) + "\n"


__all__ += ["format_intervals"]
