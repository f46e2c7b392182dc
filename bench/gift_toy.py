"""Run the toy MTIL comparison: every continual method on the same sequence, one table.

    python bench/gift_toy.py                                   # order I, all methods
    python bench/gift_toy.py --config configs/gift/toy_order2.yaml --methods finetune gift
    python bench/gift_toy.py --methods cd cd_ita gift --set ita_targets=describes --root runs/gift-toy-describes
    python bench/gift_toy.py --seeds 42 7 3 --root runs/gift-toy-seeds       # mean +- sd over training seeds

Each method runs ``synthloop continual`` with the config (only ``method``, ``out_dir`` and, with
``--seeds``, ``seed`` change) and is resumable; finished runs are read back, not re-run. Prints
Transfer / Avg / Last / BWT per method (plus the starting model's zero-shot row) and writes
``<root>/summary.{md,json}``. With ``--seeds`` each seed runs in ``<root>/seed<N>/<method>`` and the table
gives mean +- sample sd over the seeds (the evaluation sets are the same for every seed: only training
varies). Then ``<root>/intervals.md``: validation and test tables with 95% intervals (bootstrap over the
evaluation items and the seeds, ``train.gift.intervals``) and the paired differences of the comparisons the
docs make; choices are made on the validation table, the test table is reported once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from train.cli import setup_logging
from train.gift.metrics import cl_metrics
from train.gift.runner import continual

METHODS = ["finetune", "l2", "lwf", "ewc", "cd", "cd_ita", "gift"]
OVERRIDABLE = ("ita_targets", "replay_bn", "replay_base", "task_lr", "logit_scale")  # continual() arguments the toy configs leave at defaults


def main() -> None:
    setup_logging()  # the same logs as `synthloop continual`
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/gift/toy.yaml")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--root", default=None, help="output root (default: the config's out_dir parent)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, values in YAML (e.g. --set ita_targets=describes seed=7)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="run every method for each training seed and report mean ± sd")
    a = p.parse_args()
    cfg = yaml.safe_load(Path(a.config).read_text())
    for kv in a.set:
        key, sep, value = kv.partition("=")
        if not sep or key not in cfg and key not in OVERRIDABLE:
            raise SystemExit(f"--set {kv!r}: expected KEY=VALUE with a key of {a.config} or one of {OVERRIDABLE}")
        cfg[key] = yaml.safe_load(value)
    root = Path(a.root or Path(cfg["out_dir"]).parent)
    seeds = a.seeds or [cfg["seed"]]

    def seed_root(seed: int) -> Path:
        return root / f"seed{seed}" if a.seeds else root

    runs: dict[str, list[dict]] = {m: [] for m in a.methods}
    times: dict[str, list[float]] = {m: [] for m in a.methods}
    for seed in seeds:
        for method in a.methods:
            t0 = time.perf_counter()
            runs[method].append(continual(**{**cfg, "seed": seed, "method": method,
                                             "out_dir": str(seed_root(seed) / method)}))
            times[method].append(time.perf_counter() - t0)
    zs = json.loads((seed_root(seeds[0]) / a.methods[0] / "zeroshot.json").read_text())
    names = list(zs)
    runs = {"zero-shot": [cl_metrics([[zs[n] for n in names]] * len(names))], **runs}
    keys = ("transfer", "avg", "last", "bwt")

    def cell(vals: list[float]) -> str:
        return f"{vals[0]:.1f}" if len(vals) == 1 else f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"

    # wall time only for one seed: a mean over seeds would mix in finished runs that were only read back
    lines = ["| method | Transfer | Avg | Last | BWT |" + ("" if a.seeds else " wall (s) |"),
             "|---|---|---|---|---|" + ("" if a.seeds else "---|")]
    for m, rs in runs.items():
        wall = "" if a.seeds else f" {times.get(m, [0.0])[0]:.0f} |"
        lines.append(f"| {m} | " + " | ".join(cell([r[k] for r in rs]) for k in keys) + " |" + wall)
    header = f"sequence: {' -> '.join(names)}" + (f"; seeds {seeds}, mean ± sd" if a.seeds else "")
    table = "\n".join(lines)
    print(f"\n{header}\n{table}")
    (root / "summary.md").write_text(f"{header}\n\n{table}\n")
    per_seed = {m: dict(zip(map(str, seeds), rs)) if m != "zero-shot" else rs[0] for m, rs in runs.items()}
    (root / "summary.json").write_text(json.dumps({"sequence": names, "seeds": seeds, "metrics": per_seed,
                                                   "wall_s": times}, indent=2))
    report = interval_report(root, a.methods, seeds, seed_root)
    print("\n" + report)
    (root / "intervals.md").write_text(report + "\n")


COMPARISONS = [("gift", "finetune"), ("cd_ita", "cd"), ("gift", "cd_ita"), ("cd", "finetune"), ("gift", "ewc"),
               ("gift", "l2"), ("gift", "lwf")]


def interval_report(root: Path, methods: list[str], seeds: list[int], seed_root, n_boot: int = 2000) -> str:
    """Validation and test tables with 95% intervals (train.gift.intervals: items x seeds bootstrap), and
    the paired differences of the comparisons the docs make."""
    from train.gift.intervals import METRICS, bootstrap, interval, point_estimates, read_items, read_zeroshot_items

    out = []
    for split in ("val", "test"):
        runs = {}
        for m in methods:
            runs[m] = [read_items(seed_root(s) / m, split)[1] for s in seeds]
        zs = read_zeroshot_items(seed_root(seeds[0]) / methods[0], split)
        T = len(zs)
        runs = {"zero-shot": [[[zs[j] for j in range(T)] for _ in range(T)]] * len(seeds), **runs}
        reps, points = bootstrap(runs, n_boot=n_boot), point_estimates(runs)
        label = "validation" if split == "val" else "test"
        out += [f"### {label} ({len(seeds)} seeds {seeds}; 95% intervals: bootstrap over evaluation items and "
                f"seeds, {n_boot} replicates)", "", "| method | " + " | ".join(k.capitalize() if k != "bwt" else "BWT"
                                                                           for k in METRICS) + " |",
                "|---|" + "---|" * len(METRICS)]
        for m in runs:
            cells = [f"{points[m][k]:.1f} [{interval(reps[m][k])[0]:.1f}, {interval(reps[m][k])[1]:.1f}]"
                     for k in METRICS]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out += ["", f"Paired differences ({label}); **bold** where the 95% interval excludes 0:", "",
                "| difference | " + " | ".join(k.capitalize() if k != "bwt" else "BWT" for k in METRICS) + " |",
                "|---|" + "---|" * len(METRICS)]
        for a_, b_ in COMPARISONS:
            if a_ not in runs or b_ not in runs:
                continue
            cells = []
            for k in METRICS:
                d = reps[a_][k] - reps[b_][k]
                lo, hi = interval(d)
                text = f"{points[a_][k] - points[b_][k]:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                cells.append(f"**{text}**" if lo > 0 or hi < 0 else text)
            out.append(f"| {a_} − {b_} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
