"""Run the toy MTIL comparison: every continual method on the same sequence, one table.

    python bench/gift_toy.py                                   # order I, all methods
    python bench/gift_toy.py --config configs/gift/toy_order2.yaml --methods finetune gift
    python bench/gift_toy.py --methods cd cd_ita gift --set ita_targets=describes --root runs/gift-toy-describes

Each method runs ``synthloop continual`` with the config (only ``method`` and ``out_dir`` change) and is
resumable; finished runs are read back, not re-run. Prints Transfer / Avg / Last / BWT per method
(plus the starting model's zero-shot row) and writes ``<root>/summary.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from train.continual import cl_metrics
from train.continual_runner import continual

METHODS = ["finetune", "l2", "lwf", "ewc", "cd", "cd_ita", "gift"]
OVERRIDABLE = ("ita_targets", "replay_base", "task_lr", "logit_scale")  # continual() arguments the toy configs leave at defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/gift/toy.yaml")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--root", default=None, help="output root (default: the config's out_dir parent)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, values in YAML (e.g. --set ita_targets=describes seed=7)")
    a = p.parse_args()
    cfg = yaml.safe_load(Path(a.config).read_text())
    for kv in a.set:
        key, sep, value = kv.partition("=")
        if not sep or key not in cfg and key not in OVERRIDABLE:
            raise SystemExit(f"--set {kv!r}: expected KEY=VALUE with a key of {a.config} or one of {OVERRIDABLE}")
        cfg[key] = yaml.safe_load(value)
    root = Path(a.root or Path(cfg["out_dir"]).parent)
    rows, times = {}, {}
    for method in a.methods:
        t0 = time.perf_counter()
        rows[method] = continual(**{**cfg, "method": method, "out_dir": str(root / method)})
        times[method] = time.perf_counter() - t0
    zs = json.loads((root / a.methods[0] / "zeroshot.json").read_text())
    names = list(zs)
    zs_row = [zs[n] for n in names]
    rows = {"zero-shot": cl_metrics([zs_row] * len(names)), **rows}
    lines = ["| method | Transfer | Avg | Last | BWT | wall (s) |", "|---|---|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['transfer']:.1f} | {r['avg']:.1f} | {r['last']:.1f} | {r['bwt']:.1f} | "
                     f"{times.get(m, 0):.0f} |")
    table = "\n".join(lines)
    print(f"\nsequence: {' -> '.join(names)}\n{table}")
    (root / "summary.md").write_text(f"sequence: {' -> '.join(names)}\n\n{table}\n")
    (root / "summary.json").write_text(json.dumps({"sequence": names, "metrics": rows, "wall_s": times}, indent=2))


if __name__ == "__main__":
    main()
