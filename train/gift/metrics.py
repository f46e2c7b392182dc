"""Continual-learning accuracy matrix and its summary metrics (MTIL protocol).

Source: the MTIL protocol (Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual
Learning of Vision-Language Models", ICCV 2023), as used by GIFT (CVPR 2025, arXiv 2503.04229) and
summarised in ``docs/specs/gift.md`` ("Evaluation").

``A[i, j]`` = accuracy on dataset j after finishing task i, both in training order (0-based here;
the formulas below are written 1-based as in the spec). Entries above the diagonal (i < j) are
zero-shot accuracies on not-yet-trained datasets. The functions are unit-agnostic: pass percent or
fractions and get the metrics in the same unit.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.io import atomic_write, atomic_write_text

METRIC_KEYS = ("transfer", "avg", "last", "bwt")


def _as_square(matrix: Any) -> np.ndarray:
    """``matrix`` as a float64 T×T array (T ≥ 1), or ValueError."""
    if hasattr(matrix, "detach"):  # torch tensor without importing torch here
        matrix = matrix.detach().cpu().numpy()
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"accuracy matrix must be square T×T with T >= 1, got shape {a.shape}")
    return a


def cl_metrics(matrix: Any) -> dict[str, float]:
    """Transfer / Avg / Last / BWT of a complete T×T accuracy matrix.

    With 1-based indices (gift.md, "Evaluation"):

    - ``transfer = mean_{j=2..T} ( mean_{i<j} A[i, j] )`` — zero-shot accuracy on datasets not yet trained;
    - ``avg      = mean of all T² entries``;
    - ``last     = mean_j A[T, j]`` — the final model on every dataset;
    - ``bwt      = mean_{j<T} ( A[T, j] − A[j, j] )`` — backward transfer (negative = forgetting).

    For T = 1 there is no column with an earlier row and no earlier task, so ``transfer`` and ``bwt``
    are NaN (undefined, not 0); ``avg`` and ``last`` are A[1, 1].

    Args:
        matrix: nested lists, ndarray or tensor, square, T ≥ 1, all entries finite-or-NaN numbers.
            NaN entries propagate into the metrics that use them (use :class:`AccuracyMatrix` for
            partially evaluated runs).

    Raises:
        ValueError: if the matrix is not square or is empty.
    """
    a = _as_square(matrix)
    T = a.shape[0]
    if T == 1:
        transfer = bwt = math.nan
    else:
        # Column j (0-based, j ≥ 1) averaged over the rows above the diagonal, then over columns.
        transfer = float(np.mean([a[:j, j].mean() for j in range(1, T)]))
        bwt = float(np.mean(a[T - 1, : T - 1] - np.diag(a)[: T - 1]))
    return {"transfer": transfer, "avg": float(a.mean()), "last": float(a[T - 1].mean()), "bwt": bwt}


def _completed_prefix(values: np.ndarray) -> int:
    """Number of leading rows with no NaN (rows are filled in training order)."""
    k = 0
    for row in values:
        if np.isnan(row).any():
            break
        k += 1
    return k


def prefix_metrics(matrix: Any) -> dict[str, float]:
    """Metrics of a possibly partial matrix: :func:`cl_metrics` of the leading k×k block.

    k is the number of leading fully evaluated rows. The k×k block is exactly the matrix the run
    would have produced had the task sequence stopped after task k, so the numbers are those of a
    shorter, complete experiment (zero-shot scores on columns > k are not used). Adds ``"rows"`` = k;
    with k = 0 all four metrics are NaN.
    """
    a = _as_square(matrix)
    k = _completed_prefix(a)
    if k == 0:
        out = {key: math.nan for key in METRIC_KEYS}
    else:
        out = cl_metrics(a[:k, :k])
    out["rows"] = k
    return out


def _nan_to_none(x: float) -> float | None:
    # JSON has no NaN; strict parsers reject Python's NaN token, so use null.
    return None if math.isnan(x) else float(x)


class AccuracyMatrix:
    """A T×T accuracy matrix filled row by row as tasks finish.

    ``values[i, j]`` = accuracy on ``names[j]`` after training task i (``names`` in training order);
    rows not yet evaluated are NaN.
    """

    def __init__(self, names: Sequence[str], values: Any = None) -> None:
        self.names = [str(n) for n in names]
        if not self.names:
            raise ValueError("need at least one task name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"task names must be unique: {self.names}")
        T = len(self.names)
        if values is None:
            self.values = np.full((T, T), np.nan)
        else:
            self.values = _as_square(values).copy()
            if self.values.shape[0] != T:
                raise ValueError(f"{T} names but a {self.values.shape[0]}×{self.values.shape[0]} matrix")

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    def set_row(self, i: int | str, accs: Mapping[str, float]) -> None:
        """Record the accuracies on every dataset after task ``i`` (0-based index or task name).

        ``accs`` must map each task name to a number (tensors are converted with ``float``).
        """
        if isinstance(i, str):
            i = self.names.index(i)
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"row {i} out of range for {self.num_tasks} tasks")
        missing = [n for n in self.names if n not in accs]
        extra = [n for n in accs if n not in self.names]
        if missing or extra:
            raise ValueError(f"row {i}: missing datasets {missing}, unknown datasets {extra}")
        self.values[i] = [float(accs[n]) for n in self.names]

    @property
    def rows_done(self) -> int:
        """Number of leading rows fully evaluated."""
        return _completed_prefix(self.values)

    def metrics(self) -> dict[str, float]:
        """Transfer/Avg/Last/BWT plus ``"rows"`` (completed rows k).

        Complete matrix: :func:`cl_metrics`. Partial: metrics of the leading k×k block, i.e. of the
        sequence truncated after task k (see :func:`prefix_metrics`).
        """
        return prefix_metrics(self.values)

    # ---- persistence -------------------------------------------------------------------------

    def to_json(self, path: str | os.PathLike) -> None:
        """Atomically write names, matrix (NaN → null) and the current metrics as JSON."""
        m = self.metrics()
        doc = {
            "names": self.names,
            "matrix": [[_nan_to_none(x) for x in row] for row in self.values],
            "metrics": {k: (_nan_to_none(v) if k != "rows" else v) for k, v in m.items()},
        }
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> AccuracyMatrix:
        """Read a file written by :meth:`to_json` (metrics are recomputed, not read)."""
        with open(path) as f:
            doc = json.load(f)
        vals = [[math.nan if x is None else float(x) for x in row] for row in doc["matrix"]]
        return cls(doc["names"], vals)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Atomically write a CSV: header ``after task,<names...>``, one row per task, NaN as empty."""
        rows = [["after task", *self.names]]
        for name, row in zip(self.names, self.values):
            rows.append([name, *("" if math.isnan(x) else repr(float(x)) for x in row)])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> AccuracyMatrix:
        """Read a file written by :meth:`to_csv`."""
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:1] != ["after task"]:
            raise ValueError(f"{path}: not an accuracy-matrix CSV (first cell must be 'after task')")
        names = rows[0][1:]
        vals = [[math.nan if x == "" else float(x) for x in r[1:]] for r in rows[1:]]
        return cls(names, vals)

    # ---- display -----------------------------------------------------------------------------

    def table(self) -> str:
        """Fixed-width text table with the metrics (see :func:`format_matrix_table`)."""
        return format_matrix_table(self.values, self.names)

    def heatmap_png(self, path: str | os.PathLike, title: str = "accuracy matrix") -> None:
        """Write an annotated heatmap PNG: rows "after task i", columns datasets in training order.

        Uses the Agg canvas directly (no pyplot), so it neither needs a display nor changes the
        process-wide matplotlib backend. Cell text size and figure size scale with T so 6–11 tasks
        stay readable; NaN cells are left blank; the diagonal (just-trained task) is outlined.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        T = self.num_tasks
        vals = self.values
        side = max(4.0, 0.75 * T + 2.5)
        fig = Figure(figsize=(side + 1.2, side), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        finite = vals[np.isfinite(vals)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax == vmin:
            vmax = vmin + 1.0
        im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", vmin=vmin, vmax=vmax, aspect="equal")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fs = 9 if T <= 6 else (8 if T <= 9 else 7)
        # Percent-scale values get one decimal, fractions three.
        fmt = "{:.1f}" if vmax > 1.5 else "{:.3f}"
        for i in range(T):
            for j in range(T):
                x = vals[i, j]
                if not np.isfinite(x):
                    continue
                light = (x - vmin) / (vmax - vmin) > 0.6  # viridis is light at the top
                ax.text(j, i, fmt.format(x), ha="center", va="center", fontsize=fs,
                        color="black" if light else "white")
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
        ax.set_xticks(range(T))
        ax.set_xticklabels(self.names, rotation=45, ha="right", fontsize=fs + 1)
        ax.set_yticks(range(T))
        ax.set_yticklabels([f"after {i + 1}: {n}" for i, n in enumerate(self.names)], fontsize=fs + 1)
        ax.set_xlabel("evaluated on dataset")
        ax.set_ylabel("after training task")
        m = self.metrics()
        sub = (f"Transfer {m['transfer']:.2f}  Avg {m['avg']:.2f}  Last {m['last']:.2f}  "
               f"BWT {m['bwt']:.2f}")
        if m["rows"] < T:
            sub += f"  (first {m['rows']}/{T} tasks)"
        ax.set_title(f"{title}\n{sub}", fontsize=fs + 2)
        fig.tight_layout()
        # bbox "tight": long row labels would be clipped; written aside and renamed, like every result file
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def format_matrix_table(matrix: Any, names: Sequence[str]) -> str:
    """Fixed-width text rendering of an accuracy matrix followed by its four metrics.

    Rows are "after <task>", columns the datasets; NaN shows as "-". Names longer than 12
    characters are truncated to keep 11-task tables printable. Metrics are those of
    :func:`prefix_metrics` (the completed leading block when rows are missing).
    """
    a = _as_square(matrix)
    names = [str(n) for n in names]
    if len(names) != a.shape[0]:
        raise ValueError(f"{len(names)} names for a {a.shape[0]}×{a.shape[0]} matrix")
    w = max(6, min(12, max(len(n) for n in names)))
    lw = 6 + w  # "after " + name
    cell = lambda x: f"{'-':>{w}}" if np.isnan(x) else f"{x:>{w}.2f}"  # noqa: E731
    lines = [f"{'':<{lw}} " + " ".join(f"{n[:w]:>{w}}" for n in names)]
    for n, row in zip(names, a):
        lines.append(f"{'after ' + n[:w]:<{lw}} " + " ".join(cell(x) for x in row))
    m = prefix_metrics(a)
    tail = f"Transfer {m['transfer']:.2f} | Avg {m['avg']:.2f} | Last {m['last']:.2f} | BWT {m['bwt']:.2f}"
    if m["rows"] < a.shape[0]:
        tail += f" (first {m['rows']}/{a.shape[0]} tasks)"
    lines.append(tail)
    return "\n".join(lines)
