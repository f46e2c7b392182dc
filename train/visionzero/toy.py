"""The whole Vision-Zero toy pipeline in one command (CPU): base policy -> self-play -> evaluation.

    python -m train.visionzero.toy                 # SFT + self-play + eval, prints the tables
    python -m train.visionzero.toy --reuse-base    # keep runs/visionzero_toy/base_policy if it exists

Stages (each a normal ``synthloop fit`` run, so each can also be run by hand):

1. ``synthloop fit --config configs/visionzero/toy_sft.yaml``      -> runs/visionzero_toy/base_policy
2. ``synthloop fit --config configs/visionzero/toy_selfplay.yaml`` -> runs/visionzero_toy/selfplay_policy
3. ``python -m train.visionzero.evaluate``  -> runs/visionzero_toy/{eval.md, eval.json, phase.png}

Needs the quickstart's tiny CLIP (runs/quickstart/clip_final.pt, ``synthloop fit --config
configs/quickstart.yaml``, ~8 min). Wall time per stage goes to runs/visionzero_toy/summary.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], log: Path, env: dict) -> float:
    t0 = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"stage failed ({' '.join(cmd)}), log {log}:\n{tail}")
    print(f"  done in {dt / 60:.1f} min (log: {log})", flush=True)
    return dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/visionzero_toy")
    ap.add_argument("--reuse-base", action="store_true", help="skip the SFT stage when the base policy exists")
    ap.add_argument("--sft-config", default="configs/visionzero/toy_sft.yaml")
    ap.add_argument("--selfplay-config", default="configs/visionzero/toy_selfplay.yaml")
    ap.add_argument("--games", type=int, default=200, help="held-out evaluation games")
    ap.add_argument("extra", nargs="*", help="extra arguments for the self-play run (e.g. --trainer.max_steps=60)")
    a = ap.parse_args(argv)
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "runs/quickstart/clip_final.pt").is_file():
        raise SystemExit("runs/quickstart/clip_final.pt is missing: run `synthloop fit --config configs/quickstart.yaml`")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "train.cli", "fit", "--trainer.enable_progress_bar=false"]
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    if a.reuse_base and (out / "base_policy" / "vlm_config.json").is_file():
        print("reusing", out / "base_policy")
    else:
        times["sft"] = _run(cli + ["--config", a.sft_config, f"--model.init_args.lm_path={out / 'tiny_lm'}",
                                   f"--model.init_args.export_path={out / 'base_policy'}"], out / "sft.log", env)
    times["selfplay"] = _run(cli + ["--config", a.selfplay_config,
                                    f"--model.init_args.policy_path={out / 'base_policy'}",
                                    f"--model.init_args.export_path={out / 'selfplay_policy'}"] + a.extra,
                             out / "selfplay.log", env)
    times["eval"] = _run([sys.executable, "-m", "train.visionzero.evaluate", "--config", a.selfplay_config,
                          "--base", str(out / "base_policy"), "--trained", str(out / "selfplay_policy"),
                          "--games", str(a.games), "--out", str(out)], out / "eval.log", env)
    total = time.perf_counter() - t_all
    table = (out / "eval.md").read_text()
    summary = (table + "\nwall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
               + f", total {total / 60:.1f} min\nphase plot: {out / 'phase.png'}\n")
    (out / "summary.md").write_text(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
