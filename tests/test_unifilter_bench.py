"""bench/unifilter_toy.py's tables (issue 21, item 5): paired bootstrap over seeds and items, the gap recovered."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_unifilter_toy", ROOT / "bench/unifilter_toy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_gives_paired_intervals_and_the_gap_recovered(tmp_path):
    bench = _bench()
    rng = np.random.default_rng(0)
    p = {"noisy": 0.3, "filtered": 0.4, "clean": 0.5}
    for arm in bench.ARMS:
        for s in (0, 1, 2):
            for split in ("val", "test"):
                rec = {f: (rng.random(120) < p[arm]).tolist() for f in bench.FAMILIES}
                (tmp_path / f"items_{arm}_s{s}_{split}.json").write_text(json.dumps(rec))
    text = bench.report(tmp_path, [0, 1, 2], 40)
    assert text.count("| noisy |") == 2 and "### val" in text and "### test" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("- gap recovered"))
    point = float(line.split(":")[1].split("%")[0])
    assert 20 < point < 80  # true value 50 %
    boot = bench._bootstrap({arm: [{f: np.array(json.loads((tmp_path / f"items_{arm}_s{s}_val.json").read_text())[f])
                                    for f in bench.FAMILIES} for s in (0, 1, 2)] for arm in bench.ARMS}, n_boot=200)
    d = boot["clean"]["mean"] - boot["noisy"]["mean"]
    assert np.percentile(d, 2.5) > 0  # 20 points apart on 840 items x 3 seeds: the interval excludes 0
