"""95% intervals for continual-learning tables: bootstrap over evaluation items and training seeds.

A run of ``synthloop continual`` records, after every task, which evaluation items its model got right
(``<out_dir>/items/after_task<t>.json``, test and validation). An interval must cover both sources of
noise in a table cell: which images the evaluation happened to draw, and which training seed ran. Each
bootstrap replicate (``docs/results/gift.md``, "How the intervals are made"):

1. draws the seeds with replacement (``S`` of the ``S`` seeds);
2. draws, per task, its evaluation items with replacement (the same draw for every row of the matrix,
   every seed and every method: items are paired across them);
3. recomputes each seed's accuracy matrix from the resampled items, its metrics (Transfer, Avg, Last,
   BWT, as :func:`train.gift.metrics.cl_metrics`), and their mean over the drawn seeds.

The interval is the 2.5th-97.5th percentile of the replicates. For "A beats B", the difference A - B is
computed inside each replicate (same seeds, same items), and the claim is made only where its interval
excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS = ("transfer", "avg", "last", "bwt")


def read_items(out_dir: str | Path, split: str = "test") -> tuple[list[str], np.ndarray | list]:
    """``(task names, C)`` of one finished run: ``C[i][j]`` is the bool vector of task ``j``'s items
    after training task ``i`` (a T x T nested list of arrays; task j's vectors share one length)."""
    out = Path(out_dir)
    rows = sorted(out.glob("items/after_task*.json"))
    if not rows:
        raise FileNotFoundError(f"{out}: no items/after_task*.json (a run of this version, finished?)")
    first = json.loads(rows[0].read_text())[split]
    names = list(first)
    if len(rows) != len(names):
        raise ValueError(f"{out}: {len(rows)} of {len(names)} tasks evaluated; finish the run first")
    matrix = []
    for path in rows:
        rec = json.loads(path.read_text())[split]
        matrix.append([np.frombuffer(rec[n].encode(), dtype=np.uint8) == ord("1") for n in names])
    return names, matrix


def read_zeroshot_items(out_dir: str | Path, split: str = "test") -> list[np.ndarray]:
    rec = json.loads((Path(out_dir) / "items" / "zeroshot.json").read_text())[split]
    return [np.frombuffer(v.encode(), dtype=np.uint8) == ord("1") for v in rec.values()]


def metrics_from_matrices(a: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised :func:`train.gift.metrics.cl_metrics` over leading axes: ``a`` is ``(..., T, T)``."""
    T = a.shape[-1]
    transfer = np.mean([a[..., :j, j].mean(-1) for j in range(1, T)], axis=0)
    diag = np.diagonal(a, axis1=-2, axis2=-1)
    bwt = (a[..., T - 1, : T - 1] - diag[..., : T - 1]).mean(-1)
    return {"transfer": transfer, "avg": a.mean((-2, -1)), "last": a[..., T - 1, :].mean(-1), "bwt": bwt}


def bootstrap(runs: dict[str, list[list[list[np.ndarray]]]], n_boot: int = 2000,
              seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Replicates of every metric for every method: ``{method: {metric: (n_boot,) array}}``.

    ``runs[method]`` is a list over seeds of item matrices (:func:`read_items`); every method must have
    the same number of seeds and the same evaluation sets (the items are paired across methods)."""
    rng = np.random.default_rng(seed)
    methods = list(runs)
    n_seeds = {len(v) for v in runs.values()}
    if len(n_seeds) != 1:
        raise ValueError(f"methods have different numbers of seeds: { {m: len(v) for m, v in runs.items()} }")
    S = n_seeds.pop()
    first = runs[methods[0]][0]
    T = len(first)
    sizes = [len(first[0][j]) for j in range(T)]
    seed_draw = rng.integers(0, S, size=(n_boot, S))
    item_draw = [rng.integers(0, n, size=(n_boot, n)) for n in sizes]
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        per_seed = np.empty((S, n_boot, T, T))
        for s, mat in enumerate(runs[m]):
            if len(mat) != T or any(len(mat[i][j]) != sizes[j] for i in range(T) for j in range(T)):
                raise ValueError(f"{m} seed {s}: evaluation sets differ from the first run's")
            for j in range(T):
                col = np.stack([mat[i][j] for i in range(T)]).astype(np.float64)  # (T rows, n_j items)
                per_seed[s, :, :, j] = 100.0 * col[:, item_draw[j]].mean(-1).T  # (n_boot, T)
        metrics = metrics_from_matrices(per_seed)  # (S, n_boot) each
        out[m] = {k: np.take_along_axis(v.T, seed_draw, axis=1).mean(1) for k, v in metrics.items()}
    return out


def point_estimates(runs: dict[str, list[list[list[np.ndarray]]]]) -> dict[str, dict[str, float]]:
    """Mean over seeds of each run's metrics (no resampling)."""
    out = {}
    for m, mats in runs.items():
        per = [metrics_from_matrices(np.array([[100.0 * c.mean() for c in row] for row in mat])) for mat in mats]
        out[m] = {k: float(np.mean([p[k] for p in per])) for k in METRICS}
    return out


def interval(reps: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)
