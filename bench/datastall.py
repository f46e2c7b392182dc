"""Fraction of step time the quickstart spends waiting for data.

    python bench/datastall.py                      # quickstart config, 120 steps, num_workers 0/1/2
    python bench/datastall.py --steps 200 --workers 1

Runs the real quickstart training (same config, model and generator) for a short while and prints
the DataMonitor's figure: time between one step's end and the next step's start over step time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from train.core.callbacks import DataMonitor
from train.cli import run_cli


def measure(config: str, steps: int, workers: int, root: str) -> tuple[float, float, float]:
    args = ["fit", "--config", config, f"--trainer.max_steps={steps}", f"--data.init_args.num_workers={workers}",
            f"--trainer.val_check_interval={10 * steps}", "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.enable_progress_bar=false", f"--model.init_args.export_path={root}/clip.pt"]
    t0 = time.perf_counter()
    cli = run_cli(args)
    wall = time.perf_counter() - t0
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, DataMonitor))
    return monitor.wait_fraction, monitor.total_step / max(steps - monitor.skip_first - 1, 1), wall


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    rows = []
    for w in a.workers:
        with tempfile.TemporaryDirectory() as root:
            frac, step_s, wall = measure(a.config, a.steps, w, root)
        rows.append((w, frac, step_s, wall))
    print(f"\n{'num_workers':>11}  {'data wait %':>11}  {'step (s)':>8}  {'wall (s)':>8}")
    for w, frac, step_s, wall in rows:
        print(f"{w:>11}  {100 * frac:>11.2f}  {step_s:>8.3f}  {wall:>8.1f}")


if __name__ == "__main__":
    main()
