"""Validation metrics of a quality scorer, as pure functions over (scores, true levels).

* :func:`rounded_accuracy` -- the paper's metric: the score rounded to the nearest level in 0..3 equals the label;
* :func:`confusion_matrix` -- counts ``[true level, rounded level]``;
* :func:`spearman` -- rank correlation of scores and labels, ties at their average rank (labels are all ties).
"""

from __future__ import annotations

import numpy as np

N_LEVELS = 4


def rounded_levels(scores) -> np.ndarray:
    """Scores rounded to the nearest level, clipped to 0..3 (halves round to even, as ``torch.round``)."""
    return np.clip(np.round(np.asarray(scores, dtype=float)), 0, N_LEVELS - 1).astype(int)


def rounded_accuracy(scores, levels) -> float:
    """Share of samples whose rounded score equals the level (0.0 for no samples)."""
    levels = np.asarray(levels, dtype=int)
    return float((rounded_levels(scores) == levels).mean()) if levels.size else 0.0


def confusion_matrix(scores, levels, n_levels: int = N_LEVELS) -> np.ndarray:
    """``m[t, p]`` = samples of true level ``t`` whose rounded score is ``p``."""
    m = np.zeros((n_levels, n_levels), dtype=int)
    np.add.at(m, (np.asarray(levels, dtype=int), rounded_levels(scores)), 1)
    return m


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (``scipy.stats.rankdata(method='average')``)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); 0.0 when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) < 2:
        return 0.0
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def score_metrics(scores, levels) -> dict:
    """Every metric at once: ``{"acc", "spearman", "mse", "acc_level": [per level], "confusion": 4x4 list}``."""
    scores, levels = np.asarray(scores, dtype=float), np.asarray(levels, dtype=int)
    m = confusion_matrix(scores, levels)
    per_level = [float(m[t, t] / m[t].sum()) if m[t].sum() else float("nan") for t in range(N_LEVELS)]
    return {"acc": rounded_accuracy(scores, levels), "spearman": spearman(scores, levels),
            "mse": float(((scores - levels) ** 2).mean()) if levels.size else 0.0,
            "acc_level": per_level, "confusion": m.tolist()}
