"""The Vision-Zero toy over several training seeds, with 95% intervals over games and seeds.

    python bench/visionzero_toy.py --seeds 0 1 2                     # run (or reuse) 3 seeds, validation games
    python bench/visionzero_toy.py --seeds 0 1 2 --report-test       # + the test split (once, at the end)
    python bench/visionzero_toy.py --seeds 0 1 2 --blank-spy         # the blank-spy ablation (its own root)
    python bench/visionzero_toy.py --seeds 0 1 2 --summarise-only    # only read finished runs back

Each seed is one ``synthloop visionzero-toy`` run in ``<root>/seed<N>`` (self-play with
``--seed_everything=N --data.init_args.seed=100+N``: the seed changes the self-play run's games and
sampling; the SFT base is deterministic and trained once, in the first seed's folder, then linked).
A seed whose ``eval.json`` (and, with ``--report-test``, ``eval_test.json``) exists is not re-run.
Every seed's evaluation plays the SAME games of the split, so the bootstrap pairs them across seeds and
tables (:mod:`train.visionzero.intervals`). Writes, per split, ``<root>/intervals[_test].{md,json}``
(tables with 95% intervals over games and seeds, the paired trained-vs-base comparisons, the share of
training iterations per stage with a seed interval) and ``<root>/phase_seeds.png`` (stage per iteration
and accuracy EMA, one row per seed). Choose settings on the validation intervals; report the test ones.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_runs(root: Path, seeds: list[int], split: str = "val") -> tuple[list[dict], list[list[dict]]]:
    """Each seed's ``per_game`` outcomes of ``split`` and phase history (empty list when missing)."""
    from train.visionzero.evaluate import result_stem

    runs, histories, keys = [], [], None
    for s in seeds:
        d = root / f"seed{s}"
        path = d / f"{result_stem(split)}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run this seed first, or drop it from --seeds)")
        r = json.loads(path.read_text())
        if r.get("split", "val") != split:
            raise ValueError(f"{path}: holds split {r.get('split')!r}, expected {split!r}")
        if keys is None:
            keys = r["game_keys"]
        elif r["game_keys"] != keys:
            raise ValueError(f"{path}: other games than seed {seeds[0]}'s; paired intervals need the same games")
        runs.append(r["per_game"])
        hist = d / "selfplay_policy" / "phase_history.json"
        histories.append(json.loads(hist.read_text())["history"] if hist.is_file() else [])
    return runs, histories


def summarise(root: Path, seeds: list[int], split: str = "val", n_boot: int = 2000, label: str = "") -> str:
    from train.visionzero.intervals import format_intervals, intervals, phase_share_intervals

    runs, histories = load_runs(root, seeds, split)
    iv = intervals(runs, n_boot=n_boot)
    out = {"split": split, "seeds": seeds, "intervals": iv}
    text = format_intervals(iv, title=f"## {label}{split} split, seeds {', '.join(map(str, seeds))}")
    if all(histories):
        ps = phase_share_intervals(histories, n_boot=n_boot)
        out["phase_shares"] = ps
        text += (f"\ntraining iterations per stage (mean over seeds, 95% seed interval): decision "
                 f"{100 * ps['decision']['point']:.1f}% [{100 * ps['decision']['lo']:.1f}, "
                 f"{100 * ps['decision']['hi']:.1f}], clue {100 * ps['clue']['point']:.1f}% "
                 f"[{100 * ps['clue']['lo']:.1f}, {100 * ps['clue']['hi']:.1f}]\n")
        plot_seeds(histories, seeds, root / "phase_seeds.png")
    stem = "intervals" if split == "val" else f"intervals_{split}"
    (root / f"{stem}.md").write_text(text)
    (root / f"{stem}.json").write_text(json.dumps(out, indent=1))
    return text


def plot_seeds(histories: list[list[dict]], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.visionzero.intervals import phase_shares

    fig, axes = plt.subplots(len(histories), 1, figsize=(9, 1.8 * len(histories) + 0.6), dpi=110, sharex=True,
                             squeeze=False)
    for ax, hist, s in zip(axes[:, 0], histories, seeds):
        for h in hist:
            if h["phase"] == "clue":
                ax.axvspan(h["iteration"] - 1, h["iteration"], color="tab:orange", alpha=0.25, lw=0)
        ax.plot([h["iteration"] for h in hist], [h["acc_ema"] for h in hist], color="tab:blue", lw=1.5)
        sh = phase_shares(hist)
        ax.set_ylabel(f"seed {s}\nacc EMA", fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"decision {100 * sh['decision']:.0f}% / clue {100 * sh['clue']:.0f}% of iterations",
                     fontsize=7, loc="right")
    axes[0, 0].set_title("stage per iteration (orange = clue, white = decision) and accuracy EMA", fontsize=8,
                         loc="left")
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--root", default=None, help="default runs/visionzero_toy_seeds (…_blankspy_seeds with --blank-spy)")
    p.add_argument("--games", type=int, default=200)
    p.add_argument("--report-test", action="store_true", help="also evaluate and summarise the test split")
    p.add_argument("--blank-spy", action="store_true", help="ablation: the spy sees a blank image")
    p.add_argument("--summarise-only", action="store_true", help="read finished runs back; run nothing")
    p.add_argument("--n-boot", type=int, default=2000)
    a = p.parse_args(argv)
    if len(a.seeds) < 3:
        print(f"note: {len(a.seeds)} seed(s); the seed part of the intervals needs >= 3 to mean much")
    root = ROOT / (a.root or ("runs/visionzero_toy_blankspy_seeds" if a.blank_spy else "runs/visionzero_toy_seeds"))
    root.mkdir(parents=True, exist_ok=True)
    splits = ["val", "test"] if a.report_test else ["val"]
    if not a.summarise_only:
        from train.visionzero import toy

        base = root / f"seed{a.seeds[0]}" / "base_policy"
        for s in a.seeds:
            d = root / f"seed{s}"
            if all((d / f).is_file() for f in ["eval.json"] + (["eval_test.json"] if a.report_test else [])):
                print(f"seed {s}: finished, reading back {d}")
                continue
            d.mkdir(parents=True, exist_ok=True)
            if s != a.seeds[0] and (base / "vlm_config.json").is_file() and not (d / "base_policy").exists():
                os.symlink(base, d / "base_policy")
            argv_s = ["--out", str(d.relative_to(ROOT)), "--reuse-base", "--games", str(a.games)]
            argv_s += (["--report-test"] if a.report_test else []) + (["--blank-spy"] if a.blank_spy else [])
            toy.main(argv_s + ["--", f"--seed_everything={s}", f"--data.init_args.seed={100 + s}"])
    label = "ABLATION blank spy, " if a.blank_spy else ""
    for split in splits:
        print(summarise(root, a.seeds, split, a.n_boot, label))
    print(f"written to {root}/intervals*.md, {root}/phase_seeds.png")


if __name__ == "__main__":
    main()
