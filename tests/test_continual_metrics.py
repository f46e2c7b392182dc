"""Tests for the continual-learning accuracy matrix and metrics (train/gift/metrics.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from train.gift.metrics import AccuracyMatrix, cl_metrics, format_matrix_table, prefix_metrics

SPEC_A = [[50, 40, 30], [45, 80, 35], [40, 70, 90]]
NAMES = ["aircraft", "caltech", "cifar"]


@pytest.mark.parametrize("as_type", [list, np.array, torch.tensor])
def test_spec_worked_example(as_type):
    m = cl_metrics(as_type(SPEC_A))
    assert m["transfer"] == pytest.approx(36.25)
    assert m["avg"] == pytest.approx(480 / 9)
    assert m["last"] == pytest.approx(200 / 3)
    assert m["bwt"] == pytest.approx(-10.0)
    assert set(m) == {"transfer", "avg", "last", "bwt"}


def test_single_task():
    m = cl_metrics([[72.5]])
    assert math.isnan(m["transfer"]) and math.isnan(m["bwt"])
    assert m["avg"] == 72.5 and m["last"] == 72.5


@pytest.mark.parametrize("bad", [[[1, 2, 3], [4, 5, 6]], [1, 2, 3], [], np.zeros((0, 0))])
def test_non_square_rejected(bad):
    with pytest.raises(ValueError, match="square"):
        cl_metrics(bad)


def _filled() -> AccuracyMatrix:
    am = AccuracyMatrix(NAMES)
    for i, row in enumerate(SPEC_A):
        am.set_row(i, dict(zip(NAMES, row)))
    return am


def test_accuracy_matrix_partial_and_complete():
    am = AccuracyMatrix(NAMES)
    assert am.metrics()["rows"] == 0 and math.isnan(am.metrics()["avg"])
    am.set_row(0, {"aircraft": 50, "caltech": 40, "cifar": torch.tensor(30.0)})
    m = am.metrics()
    assert m["rows"] == 1 and m["avg"] == 50 and math.isnan(m["transfer"])
    am.set_row("caltech", dict(zip(NAMES, SPEC_A[1])))
    m = am.metrics()
    # Leading 2×2 block [[50, 40], [45, 80]]: transfer 40, avg 53.75, last 62.5, bwt −5.
    assert (m["rows"], m["transfer"], m["avg"], m["last"], m["bwt"]) == (2, 40, 53.75, 62.5, -5)
    am.set_row(2, dict(zip(NAMES, SPEC_A[2])))
    m = am.metrics()
    assert m["rows"] == 3 and m["transfer"] == pytest.approx(36.25) and m["bwt"] == pytest.approx(-10)
    assert prefix_metrics(SPEC_A)["avg"] == pytest.approx(480 / 9)
    with pytest.raises(ValueError):
        am.set_row(0, {"aircraft": 1.0})
    with pytest.raises(IndexError):
        am.set_row(3, dict(zip(NAMES, SPEC_A[0])))


def test_json_round_trip(tmp_path):
    am = AccuracyMatrix(NAMES)
    am.set_row(0, dict(zip(NAMES, [50.125, 40, 30])))
    p = tmp_path / "sub" / "acc.json"
    am.to_json(p)
    doc = json.loads(p.read_text())  # strict JSON: NaN written as null
    assert doc["matrix"][1] == [None, None, None] and doc["metrics"]["rows"] == 1
    back = AccuracyMatrix.from_json(p)
    assert back.names == NAMES
    np.testing.assert_array_equal(back.values, am.values)  # NaN positions equal too
    full = _filled()
    full.to_json(p)
    assert AccuracyMatrix.from_json(p).metrics() == full.metrics()
    assert [f.name for f in p.parent.iterdir()] == ["acc.json"]  # no temp files left


def test_csv_round_trip(tmp_path):
    am = _filled()
    am.values[2] = np.nan
    p = tmp_path / "acc.csv"
    am.to_csv(p)
    lines = p.read_text().splitlines()
    assert lines[0] == "after task,aircraft,caltech,cifar"
    assert lines[1].startswith("aircraft,50.0,") and lines[3] == "cifar,,,"
    back = AccuracyMatrix.from_csv(p)
    assert back.names == NAMES
    np.testing.assert_array_equal(back.values, am.values)


def test_heatmap_png(tmp_path):
    am = _filled()
    p = tmp_path / "heat.png"
    am.heatmap_png(p, title="toy run")
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # 11 tasks, partially filled, percent scale: still renders.
    names = [f"dataset_{k:02d}" for k in range(11)]
    big = AccuracyMatrix(names)
    rng = np.random.default_rng(0)
    for i in range(7):
        big.set_row(i, dict(zip(names, rng.uniform(20, 95, 11))))
    big.heatmap_png(tmp_path / "big.png")
    assert (tmp_path / "big.png").read_bytes()[:4] == b"\x89PNG"


def test_format_matrix_table():
    s = format_matrix_table(np.array(SPEC_A, dtype=float), NAMES)
    lines = s.splitlines()
    assert len(lines) == 5
    assert len({len(line) for line in lines[:4]}) == 1  # fixed width
    assert "Transfer 36.25" in lines[-1] and "Avg 53.33" in lines[-1] and "Last 66.67" in lines[-1]
    assert "BWT -10.00" in lines[-1]
    partial = np.array(SPEC_A, dtype=float)
    partial[2] = np.nan
    s2 = format_matrix_table(partial, NAMES)
    assert "(first 2/3 tasks)" in s2 and "-" in s2.splitlines()[3]
    with pytest.raises(ValueError):
        format_matrix_table(SPEC_A, NAMES[:2])
