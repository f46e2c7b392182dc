"""UniFilter's toy experiment: does a learned quality filter recover what a noisy caption stream costs CLIP?

    python bench/unifilter_toy.py --out runs/unifilter-exp                      # 3 seeds, ~45 min on 2 cores
    python bench/unifilter_toy.py --out runs/unifilter-exp --report-only        # tables from finished runs

Three arms of contrastive pre-training (``configs/unifilter/clip_noisy.yaml``: the quickstart's tiny CLIP,
64 px, the same steps and batch size in every arm), each with seeds 0, 1, 2:

* ``noisy``: the LevelCaptions stream with half of its captions corrupted (levels 0, 1, 2 at 1/6 each);
* ``clean``: the same generator with only exact captions (level 3);
* ``filtered``: the noisy stream through ``train.unifilter.ScoreFilter`` keeping the best half of each raw
  batch (``top_fraction: 0.5``, fixed before any run: it is the stream's known clean fraction; no other rule
  was tried), so it trains on as many samples as the other arms and generates twice as many.

The scorer is trained before the filtered arm, on LevelCaptions' training scenes (balanced levels, exact
labels) with the vision tower of the ``noisy`` seed-0 CLIP: the filter is bootstrapped from what the noisy
pool itself gave, never from the clean arm or the quickstart. Candidates of ``--scorer-steps`` steps are
trained; the filter uses the one with the best rounded-score accuracy on the ``val`` scenes (its last
validation), and only that one is scored, once, on ``test`` scenes (never seen in its training), with the
per-level confusion matrix and the filter's precision on the noisy mix.

Every exported CLIP is scored zero-shot on the world's seven families, on the ``val`` and the ``test``
evaluation sets (disjoint seed spaces, neither drawn by any training stream). Intervals: 95% bootstrap over
seeds and evaluation items (paired across arms). Gap recovered = (filtered - noisy) / (clean - noisy) of the
mean over families, computed inside each bootstrap replicate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["shape", "color", "count", "material", "size", "relation", "digits"]
ARMS = ["noisy", "filtered", "clean"]


def _fit(config: str, root: Path, name: str, *overrides: str) -> float:
    """Run ``synthloop fit`` in a subprocess (as a user would) and return its wall time in seconds."""
    cmd = [sys.executable, "-m", "train.cli", "fit", "--config", config, "--trainer.default_root_dir", str(root),
           "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.name", name, *overrides]
    t0 = time.perf_counter()
    log = root / f"{name}.log"
    root.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"bench/unifilter_toy.py: {name} failed (rc {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _run_dir(root: Path, name: str) -> Path:
    return root / name / "version_0"


def _arm_overrides(arm: str, seed: int, scorer: Path | None, steps: int, batch: int) -> list[str]:
    o = ["--seed_everything", str(seed), "--data.init_args.seed", str(seed), "--trainer.max_steps", str(steps),
         "--data.init_args.batch_size", str(batch)]
    if arm == "clean":
        o += ["--data.init_args.generator.init_args.level_weights", "[0, 0, 0, 1]"]
    if arm == "filtered":
        o += ["--data.init_args.sample_filter", json.dumps({"class_path": "train.unifilter.ScoreFilter",
                                                              "init_args": {"scorer": str(scorer),
                                                                            "top_fraction": 0.5}})]
    return o


_EVAL_SETS: dict = {}


def _zero_shot_items(ckpt: Path, split: str, per_class: int) -> dict[str, np.ndarray]:
    """Per evaluation image of each family, whether the checkpoint's zero-shot top-1 is right."""
    import torch

    from models.clip import create_clip
    from train.clip.zeroshot import build_world_eval_sets, zero_shot_correct

    bundle = create_clip("synthloop-tiny-rn64", pretrained=str(ckpt))
    model = bundle.model.eval()
    if (split, per_class) not in _EVAL_SETS:  # rendered once per split: every arm sees the same images
        _EVAL_SETS[split, per_class] = build_world_eval_sets(FAMILIES, per_class, seed=1234,
                                                             image_size=bundle.image_size,
                                                             preprocess=bundle.preprocess_val, split=split)
    return {es.name: zero_shot_correct(model, bundle.tokenizer, es, torch.device("cpu")).numpy()
            for es in _EVAL_SETS[split, per_class]}


def _score_stream(model, gen, n: int, batch: int) -> tuple:
    import torch

    from datagen.generator import sample_rng

    preds, levels = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            samples = [gen.generate(sample_rng(9999, i), i) for i in range(start, min(n, start + batch))]
            pixels = torch.stack([model.preprocess(s["image"]) for s in samples])
            texts = [f"{model.config.image_token} {s['txt']}" for s in samples]
            preds.append(model.score(texts, pixels).float())
            levels += [int(s["score"]) for s in samples]
    return torch.cat(preds), torch.tensor(levels)


def _scorer_test(scorer: Path, n: int, batch: int) -> dict:
    """On LevelCaptions samples of the *test* scenes (never trained on), once: the rounded-score accuracy,
    confusion and Spearman on balanced levels, and the filter's precision on the noisy stream's mix (the share
    of exact captions among the best half of each raw batch of ``batch``; 50 % without a filter)."""
    from datagen.unifilter import LevelCaptions
    from models.unifilter import UniFilterScorer
    from train.unifilter.metrics import score_metrics

    model = UniFilterScorer.from_pretrained(scorer).eval()
    common = dict(image_size=64, n_objects=(1, 4), split="test", text_mode="dense")  # as the stream
    out = score_metrics(*_score_stream(model, LevelCaptions(**common), n, 64))
    scores, levels = _score_stream(model, LevelCaptions(**common, level_weights=[1, 1, 1, 3]), 4 * batch, batch)
    kept = []
    for start in range(0, len(scores), batch):
        s, lv = scores[start:start + batch], levels[start:start + batch]
        kept += lv[s.argsort(descending=True)[: (len(s) + 1) // 2]].tolist()
    out["filter_precision_top_half"] = float(np.mean([lv == 3 for lv in kept]))
    out["filter_kept_levels"] = {str(k): int(sum(lv == k for lv in kept)) for k in range(4)}
    return out


def _bootstrap(items: dict[str, list[dict[str, np.ndarray]]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Replicates of each arm's per-family and mean accuracy: seeds and items drawn with replacement, the same
    draws for every arm (paired)."""
    rng = np.random.default_rng(seed)
    S = len(next(iter(items.values())))
    sizes = {f: len(items[ARMS[0]][0][f]) for f in FAMILIES}
    seed_draw = rng.integers(0, S, size=(n_boot, S))
    item_draw = {f: rng.integers(0, sizes[f], size=(n_boot, sizes[f])) for f in FAMILIES}
    out = {}
    for arm, per_seed in items.items():
        fam = {}
        for f in FAMILIES:
            acc = np.stack([r[f][item_draw[f]].mean(-1) for r in per_seed])  # (S, n_boot)
            fam[f] = 100 * acc[seed_draw, np.arange(n_boot)[:, None]].mean(-1)
        fam["mean"] = np.mean([fam[f] for f in FAMILIES], axis=0)
        out[arm] = fam
    return out


def _throughput(root: Path, name: str) -> dict:
    """The run's last progress line (samples/s, data wait) and, when filtered, its filter counters."""
    import re

    line = [ln for ln in (root / f"{name}.log").read_text().splitlines() if "samples/s" in ln][-1]
    out = {"samples_per_s": float(re.search(r"([0-9.]+) samples/s", line).group(1))}
    wait = re.search(r"data wait ([0-9.]+)%", line)
    out["data_wait_pct"] = float(wait.group(1)) if wait else float("nan")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(_run_dir(root, name)), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("data/filter_seen", "data/filter_kept"):
        if tag in acc.Tags()["scalars"]:
            out[tag.split("/")[1]] = acc.Scalars(tag)[-1].value
    return out


def _val_curve(run: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, round(e.value, 4)) for e in acc.Scalars(t)]
            for t in ("unifilter/val_acc", "unifilter/val_spearman") if t in acc.Tags()["scalars"]}


def _choose_scorer(root: Path, candidates: list[int]) -> tuple[Path, dict]:
    """The candidate with the best final validation accuracy (ties: fewer steps); never a test figure."""
    curves = {n: _val_curve(_run_dir(root, f"scorer_{n}")) for n in candidates}
    best = max(candidates, key=lambda n: (curves[n]["unifilter/val_acc"][-1][1], -n))
    return _run_dir(root, f"scorer_{best}") / "scorer", {"chosen_steps": best, "curves": curves}


def _jsonable(x):
    return x.tolist() if hasattr(x, "tolist") else float(x)


def _ci(x: np.ndarray) -> str:
    lo, hi = np.percentile(x, [2.5, 97.5])
    return f"[{lo:.1f}, {hi:.1f}]"


def report(root: Path, seeds: list[int], per_class: int) -> str:
    lines = []
    for split in ("val", "test"):
        items = {arm: [] for arm in ARMS}
        for arm in ARMS:
            for s in seeds:
                cache = root / f"items_{arm}_s{s}_{split}.json"
                if cache.is_file():
                    rec = {k: np.array(v, dtype=bool) for k, v in json.loads(cache.read_text()).items()}
                else:
                    rec = _zero_shot_items(_run_dir(root, f"{arm}_s{s}") / "clip_final.pt", split, per_class)
                    cache.write_text(json.dumps({k: v.tolist() for k, v in rec.items()}))
                items[arm].append(rec)
        point = {arm: {f: 100 * np.mean([r[f].mean() for r in items[arm]]) for f in FAMILIES} for arm in ARMS}
        for arm in ARMS:
            point[arm]["mean"] = float(np.mean([point[arm][f] for f in FAMILIES]))
        boot = _bootstrap(items)
        n_items = sum(len(items[ARMS[0]][0][f]) for f in FAMILIES)
        lines += [f"### {split} ({len(seeds)} seeds, {n_items} evaluation images; zero-shot accuracy in %, "
                  f"95% interval over seeds and items)", "",
                  "| arm | " + " | ".join(FAMILIES) + " | mean |", "|---" * (len(FAMILIES) + 2) + "|"]
        for arm in ARMS:
            cells = [f"{point[arm][f]:.1f}" for f in FAMILIES + ["mean"]]
            lines.append(f"| {arm} | " + " | ".join(cells[:-1]) + f" | **{cells[-1]}** {_ci(boot[arm]['mean'])} |")
        lines.append("")
        for a, b in (("clean", "noisy"), ("filtered", "noisy"), ("clean", "filtered")):
            d = boot[a]["mean"] - boot[b]["mean"]
            lines.append(f"- {a} − {b} (mean over families): {point[a]['mean'] - point[b]['mean']:+.1f} {_ci(d)}")
        gap = boot["clean"]["mean"] - boot["noisy"]["mean"]
        rec = np.where(np.abs(gap) > 1e-9, (boot["filtered"]["mean"] - boot["noisy"]["mean"]) / gap, np.nan)
        g0 = point["clean"]["mean"] - point["noisy"]["mean"]
        rec0 = (point["filtered"]["mean"] - point["noisy"]["mean"]) / g0 if abs(g0) > 1e-9 else float("nan")
        lines.append(f"- gap recovered by the filter: {100 * rec0:.0f} % "
                     f"[{np.nanpercentile(100 * rec, 2.5):.0f}, {np.nanpercentile(100 * rec, 97.5):.0f}] %")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/unifilter-exp")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="CLIP steps per arm")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--scorer-steps", type=int, nargs="+", default=[600, 2400],
                   help="scorer candidates (training steps); the filter uses the best by validation accuracy")
    p.add_argument("--eval-per-class", type=int, default=40)
    p.add_argument("--scorer-test-samples", type=int, default=512)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    root = Path(a.out).resolve()
    config = "configs/unifilter/clip_noisy.yaml"
    walls = json.loads((root / "walls.json").read_text()) if (root / "walls.json").is_file() else {}

    def save_walls() -> None:
        (root / "walls.json").write_text(json.dumps(walls, indent=1))

    def scorer_dir(steps: int) -> Path:
        return _run_dir(root, f"scorer_{steps}") / "scorer"

    scorer = None
    if not a.report_only:
        order = [("noisy", s) for s in a.seeds] + [("scorer", n) for n in a.scorer_steps] + \
                [("clean", s) for s in a.seeds] + [("filtered", s) for s in a.seeds]
        for arm, s in order:
            if arm == "filtered" and scorer is None:
                scorer, choice = _choose_scorer(root, a.scorer_steps)
                (root / "scorer_choice.json").write_text(json.dumps(choice, indent=1))
                print(f"[unifilter_toy] scorer chosen on validation: {choice}", flush=True)
            name = f"scorer_{s}" if arm == "scorer" else f"{arm}_s{s}"
            done = scorer_dir(s).is_dir() if arm == "scorer" else (_run_dir(root, name) / "clip_final.pt").is_file()
            if done:
                continue
            print(f"[unifilter_toy] {name} ...", flush=True)
            if arm == "scorer":
                tower = _run_dir(root, f"noisy_s{a.seeds[0]}") / "clip_final.pt"
                walls[name] = _fit("configs/unifilter/toy.yaml", root, name, "--trainer.max_steps", str(s),
                                   "--trainer.val_check_interval", str(s // 3),
                                   "--model.init_args.vision_model", "synthloop-tiny-rn64",
                                   "--model.init_args.vision_pretrained", str(tower),
                                   "--model.init_args.visual_grid", "2",
                                   "--data.init_args.generator.init_args.image_size", "64",
                                   "--data.init_args.generator.init_args.n_objects", "[1, 4]",
                                   "--data.init_args.generator.init_args.text_mode", "dense")
            else:
                walls[name] = _fit(config, root, name, *_arm_overrides(arm, s, scorer, a.steps, a.batch))
            print(f"[unifilter_toy] {name}: {walls[name]:.0f} s", flush=True)
            save_walls()
        if scorer is None:
            scorer, choice = _choose_scorer(root, a.scorer_steps)
            (root / "scorer_choice.json").write_text(json.dumps(choice, indent=1))
        test_file = root / "scorer_test.json"
        if not test_file.is_file():
            test_file.write_text(json.dumps(_scorer_test(scorer, a.scorer_test_samples, a.batch), indent=1, default=_jsonable))
    text = report(root, a.seeds, a.eval_per_class)
    st = json.loads((root / "scorer_test.json").read_text())
    choice = json.loads((root / "scorer_choice.json").read_text())
    text += ("\n### the scorers on validation scenes during training (step, value), and the choice\n\n```\n"
             + json.dumps(choice, indent=1) + "\n```\n")
    text += "\n### the chosen scorer on test scenes (once)\n\n```\n" + json.dumps(st, indent=1) + "\n```\n"
    text += "\n### wall times (s)\n\n" + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) + "\n"
    text += "\n### trainer throughput (last progress line of each run; filter counters from TensorBoard)\n\n"
    text += "| run | samples/s | data wait % | filter seen | filter kept |\n|---|---|---|---|---|\n"
    for arm in ARMS:
        for s in a.seeds:
            t = _throughput(root, f"{arm}_s{s}")
            text += (f"| {arm}_s{s} | {t['samples_per_s']:.1f} | {t['data_wait_pct']:.1f} | "
                     f"{t.get('filter_seen', '')} | {t.get('filter_kept', '')} |\n")
    (root / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
