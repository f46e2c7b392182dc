"""train.gift.intervals: the vectorised metrics equal cl_metrics; the bootstrap pairs items and seeds."""

from __future__ import annotations

import json

import numpy as np

from train.gift.intervals import bootstrap, interval, metrics_from_matrices, point_estimates, read_items
from train.gift.metrics import cl_metrics


def _run(rng, T=3, n=(20, 30, 25), p=0.7):
    return [[rng.random(n[j]) < p for j in range(T)] for _ in range(T)]


def test_vectorised_metrics_equal_cl_metrics():
    a = np.random.default_rng(0).uniform(0, 100, size=(4, 4))
    got, want = metrics_from_matrices(a), cl_metrics(a)
    assert all(abs(float(got[k]) - want[k]) < 1e-9 for k in want)


def test_bootstrap_intervals_cover_the_estimate_and_a_method_equals_itself(tmp_path):
    rng = np.random.default_rng(1)
    good = [_run(rng, p=0.8) for _ in range(3)]
    bad = [_run(rng, p=0.5) for _ in range(3)]
    runs = {"good": good, "bad": bad, "good_again": good}
    reps, points = bootstrap(runs, n_boot=500, seed=0), point_estimates(runs)
    for m in runs:
        for k in ("transfer", "avg", "last"):
            lo, hi = interval(reps[m][k])
            assert lo <= points[m][k] <= hi
    lo, hi = interval(reps["good"]["avg"] - reps["bad"]["avg"])
    assert lo > 0  # a 30-point gap on ~75 items x 3 seeds is resolved
    assert np.all(reps["good"]["avg"] - reps["good_again"]["avg"] == 0)  # paired: same items, same seeds
    # read_items: the runner's items/after_task<t>.json files
    out = tmp_path / "run"
    (out / "items").mkdir(parents=True)
    for i, row in enumerate(good[0]):
        rec = {split: {f"t{j}": "".join("1" if v else "0" for v in row[j]) for j in range(3)} for split in ("test", "val")}
        (out / "items" / f"after_task{i:02d}.json").write_text(json.dumps(rec))
    names, mat = read_items(out)
    assert names == ["t0", "t1", "t2"] and all(np.array_equal(mat[i][j], good[0][i][j]) for i in range(3) for j in range(3))
