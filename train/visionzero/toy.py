"""The whole Vision-Zero toy pipeline in one command (CPU): base policy -> self-play -> evaluation.

    synthloop visionzero-toy                 # SFT + self-play + eval, prints the tables
    synthloop visionzero-toy --reuse-base    # keep runs/visionzero_toy/base_policy if it exists
    synthloop visionzero-toy -- --trainer.max_steps=60    # extra arguments for the self-play stage
    synthloop visionzero-toy --report-test   # also the test split (once the settings are chosen on val)
    synthloop visionzero-toy --blank-spy     # ablation: the spy sees a blank image (runs/visionzero_toy_blankspy)

Stages, chained in this process through :func:`train.core.cli.fit_stage` (each is exactly the
``synthloop`` command shown, so each can also be run by hand):

1. ``synthloop fit --config configs/visionzero/toy_sft.yaml``      -> runs/visionzero_toy/base_policy
2. ``synthloop fit --config configs/visionzero/toy_selfplay.yaml`` -> runs/visionzero_toy/selfplay_policy
3. ``synthloop visionzero-eval --config configs/visionzero/toy_selfplay.yaml``  (validation games)
   -> runs/visionzero_toy/{eval.md, eval.json, phase.png}
4. with ``--report-test`` only: the same with ``--split test`` -> runs/visionzero_toy/{eval_test.md, eval_test.json}

The spy sees an edited image (the configs' ``blank_spy: false``); ``--blank-spy`` is the labelled
ablation of the revised paper's blank spy image: it overrides ``blank_spy`` in both training stages
and in the evaluation, and writes to ``runs/visionzero_toy_blankspy`` unless ``--out`` is given.

Needs the quickstart's tiny CLIP (runs/quickstart/clip_final.pt, ``synthloop fit --config
configs/quickstart.yaml``, ~8 min). Paths are relative to the repository root (the stages run there).
Each stage's output is also written to ``<out>/{sft,selfplay,eval}.log``; the wall time per stage goes
to ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from models.errors import positive_int

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ARGS = "--data.init_args.generator.init_args.source.init_args"  # the toy configs' WorldPairs


class _Tee:
    """A text stream that writes to the console and to a log file."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


# loggers that do not propagate to the root logger (Lightning's own handlers)
_LOGGERS = ("", "pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def _logged(log: Path) -> Iterator[None]:
    """Copy everything printed or logged while the block runs into ``log`` (the console still gets it)."""
    with open(log, "w", encoding="utf-8") as f:
        out, err = sys.stdout, sys.stderr
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(handler)
        sys.stdout, sys.stderr = _Tee(out, f), _Tee(err, f)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(handler)


def _stage(title: str, log: Path, fn: Callable[[], object]) -> float:
    print(f"$ {title}", flush=True)
    t0 = time.perf_counter()
    with _logged(log):
        fn()
    dt = time.perf_counter() - t0
    print(f"  done in {dt / 60:.1f} min (log: {log})", flush=True)
    return dt



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, prog="synthloop visionzero-toy", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="default runs/visionzero_toy (runs/visionzero_toy_blankspy with --blank-spy)")
    ap.add_argument("--reuse-base", action="store_true", help="skip the SFT stage when the base policy exists")
    ap.add_argument("--sft-config", default="configs/visionzero/toy_sft.yaml")
    ap.add_argument("--selfplay-config", default="configs/visionzero/toy_selfplay.yaml")
    ap.add_argument("--games", type=positive_int, default=200, help="evaluation games (per split)")
    ap.add_argument("--report-test", action="store_true",
                    help="also evaluate on the test split (default: validation games only)")
    ap.add_argument("--blank-spy", action="store_true",
                    help="ablation: the spy sees a blank image in training and evaluation")
    ap.add_argument("extra", nargs="*", help="extra arguments for the self-play run (e.g. --trainer.max_steps=60)")
    a = ap.parse_args(argv)
    if a.out is None:
        a.out = "runs/visionzero_toy_blankspy" if a.blank_spy else "runs/visionzero_toy"
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported (the stages import it)
    with contextlib.chdir(ROOT):  # the configs name their files relative to the repository root
        for opt, path in (("--sft-config", a.sft_config), ("--selfplay-config", a.selfplay_config)):
            if not Path(path).is_file():
                ap.error(f"{opt} {path}: no such file (paths are relative to the repository root {ROOT})")
        run(a)


def run(a: argparse.Namespace) -> None:
    from train.core.cli import fit_stage
    from train.visionzero import evaluate

    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "runs/quickstart/clip_final.pt").is_file():
        raise SystemExit("runs/quickstart/clip_final.pt is missing: run `synthloop fit --config configs/quickstart.yaml`")
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    blank = getattr(a, "blank_spy", False)
    spy = ([f"{SOURCE_ARGS}.blank_spy=true"] if blank else [])
    if a.reuse_base and (out / "base_policy" / "vlm_config.json").is_file():
        print("reusing", out / "base_policy")
    else:
        sft = [f"--model.init_args.lm_path={out / 'tiny_lm'}", f"--model.init_args.export_path={out / 'base_policy'}",
               *spy]
        times["sft"] = _stage(f"synthloop fit --config {a.sft_config} " + " ".join(sft), out / "sft.log",
                              lambda: fit_stage(a.sft_config, sft))
    selfplay = [f"--model.init_args.policy_path={out / 'base_policy'}",
                f"--model.init_args.export_path={out / 'selfplay_policy'}", *spy, *a.extra]
    times["selfplay"] = _stage(f"synthloop fit --config {a.selfplay_config} " + " ".join(selfplay),
                               out / "selfplay.log", lambda: fit_stage(a.selfplay_config, selfplay))
    ev = ["--config", a.selfplay_config, "--base", str(out / "base_policy"), "--trained", str(out / "selfplay_policy"),
          "--games", str(a.games), "--out", str(out)] + (["--blank-spy"] if blank else [])
    times["eval"] = _stage("synthloop visionzero-eval " + " ".join(ev), out / "eval.log", lambda: evaluate.main(ev))
    tables = [(out / "eval.md").read_text()]
    if getattr(a, "report_test", False):
        ev_test = ev + ["--split", "test"]
        times["eval_test"] = _stage("synthloop visionzero-eval " + " ".join(ev_test), out / "eval_test.log",
                                    lambda: evaluate.main(ev_test))
        tables.append((out / "eval_test.md").read_text())
    total = time.perf_counter() - t_all
    head = "ABLATION: blank spy image (--blank-spy)\n\n" if blank else ""
    summary = (head + "\n".join(tables) + "\nwall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
               + f", total {total / 60:.1f} min\nphase plot: {out / 'phase.png'}\n")
    (out / "summary.md").write_text(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
