"""The Unicorn toy recipe end to end, on the scene world and 2 CPU cores::

    synthloop unicorn-toy                                # (also: python -m train.unicorn.toy)
    synthloop unicorn-toy --variants mean_shift raw --instruct-steps 200

1. the tiny CLIP (``runs/quickstart/clip_final.pt``; trained with ``configs/quickstart.yaml`` when missing)
   and its modality-gap diagnostics on paired world data;
2. a tiny Llama with a word-level world tokenizer learns to answer questions about a scene it reads as
   text (``configs/unicorn/toy_text.yaml``: caption + multiple-choice and open items, ``text_mix: short``),
   the stand-in for a pretrained LLM; its text-reading accuracy is the ceiling of any transfer;
3. the held-out VQA files (``train.unicorn.vqa_eval.build_world_vqa``; rendered images never seen in training).
   By default the split is compositional (``datagen.world.holdout``): no training text of any stage names one
   of 8 colour-shape combinations; ``val`` asks about scenes holding one of 4 of them (stage B scores it:
   choices are made there), ``test`` about the other 4 (reported once), ``in-distribution`` about new renders
   of training combinations. Beside each: what of it occurs in the training text (captions, question-answer
   pairs, triples) and the majority-answer prior (``train.unicorn.overlap``). ``--no-holdout``: the old
   single in-distribution file;
4. per variant, stage A (``toy_align.yaml``) then stage B (``toy_instruct.yaml``) and the VQA evaluation:
   ``real`` (the upper bound: rendered-image embeddings), and the text-only runs ``mean_shift``, ``raw``,
   ``mean_shift_noise``, ``ideal`` (and ``realign`` when asked for). Stage B starts from stage A's export
   and so continues its text mean μ_T (``text_mean.safetensors``; stage A warms it up with 1024 captions);
   ``results.json`` gives each variant's ``text_mean_n``, the captions behind the final μ_T.

Scenes hold one object by default (``--n-objects 1 1``): the tiny CLIP's single embedding then carries every
answer (with 1-3 objects the tiny LM could not even answer from the caption text, see ``docs/unicorn.md``).
Every step is skipped when its output exists, so a killed pipeline continues where it stopped
(a stage that was interrupted mid-way is rerun from its start). The results go to
``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

from datagen.world.holdout import TEST_COMBOS, VAL_COMBOS
from models.errors import UserError, non_negative_float, positive_int

log = logging.getLogger("train.unicorn.toy")
ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("real", "mean_shift", "raw", "mean_shift_noise", "ideal", "realign")


def _fit(config: str, overrides: list[str]) -> float:
    from train.core.cli import fit_stage

    return fit_stage(ROOT / config, overrides)


def _steps(n: int) -> list[str]:
    """A stage of ``n`` steps with the toy configs' warm-up rule (5 % of the stage, at least one step)."""
    return [f"--trainer.max_steps={n}", f"--model.init_args.warmup_steps={max(1, math.ceil(0.05 * n))}"]


def _variant_args(variant: str, noise_std: float) -> list[str]:
    if variant == "real":
        return ["--model.init_args.embedding=image", "--data.init_args.generator.init_args.render_size=64"]
    args = ["--model.init_args.embedding=text", f"--model.init_args.transfer_mode={variant}"]
    if variant == "mean_shift_noise":
        args.append(f"--model.init_args.noise_std={noise_std}")
    return args


def run(out: str = "runs/unicorn-toy", clip: str = "runs/quickstart/clip_final.pt",
        variants: tuple[str, ...] = ("real", "mean_shift", "raw", "mean_shift_noise", "ideal"),
        text_steps: int = 600, align_steps: int = 150, instruct_steps: int = 300, noise_std: float = 0.05,
        vqa_images: int = 300, lm_hidden: int = 128, lm_layers: int = 2, align_train_lm: bool = False,
        n_objects: tuple[int, int] = (1, 1), seed: int = 0, holdout: bool = True,
        splits: tuple[str, ...] | None = None) -> dict:
    import torch

    from datagen.text.corpus import world_corpus
    from models.tiny_lm import build_tiny_lm
    from train.unicorn.module import clip_gap_diagnostics

    torch.set_num_threads(max(1, torch.get_num_threads()))
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()
    if not Path(clip).is_file():
        log.info("no CLIP at %s: training one with configs/quickstart.yaml", clip)
        _fit("configs/quickstart.yaml", [f"--model.init_args.export_path={clip}"])
        timings["clip"] = time.time() - t0
    gap_file = outp / "gap.json"
    if not gap_file.is_file():
        gap_file.write_text(json.dumps(clip_gap_diagnostics("synthloop-tiny-rn64", clip, n_objects=n_objects), indent=1))
    gap = json.loads(gap_file.read_text())
    log.info("modality gap of the tiny CLIP: %s", gap)

    objs = f"[{n_objects[0]},{n_objects[1]}]"
    held = list(VAL_COMBOS) + list(TEST_COMBOS) if holdout else []
    common = [f"--model.init_args.clip_checkpoint={clip}", f"--trainer.default_root_dir={out}",
              f"--trainer.logger.init_args.save_dir={out}", f"--data.init_args.generator.init_args.n_objects={objs}",
              f"--model.init_args.pool_n_objects={objs}", f"--seed_everything={seed}"]
    if held:  # no training text of any stage names a held-out colour-shape combination
        common.append(f"--data.init_args.generator.init_args.holdout={json.dumps(held)}")
    lm_world = outp / "lm_world"
    if not (lm_world / "vlm_config.json").is_file():
        t = time.time()
        build_tiny_lm(outp / "lm_init", texts=world_corpus(), hidden=lm_hidden, layers=lm_layers, seed=seed)
        _fit("configs/unicorn/toy_text.yaml", common + [f"--model.init_args.lm_path={outp / 'lm_init'}",
                                                        f"--model.init_args.export_dir={lm_world}",
                                                        *_steps(text_steps)])
        timings["text"] = time.time() - t
    files = eval_files(outp, vqa_images, n_objects, holdout, splits)
    vqa = files["val"] if holdout else files["in-distribution"]  # scored inside stage B, where choices are made
    reading, baselines = {}, {}
    train_text = lmv = None
    for split, path in files.items():
        reading_file = outp / f"text_reading_{split}.json"
        if not reading_file.is_file():  # the LM given the gold caption as text: the ceiling of any transfer
            from models.vlm import EmbeddingVLM
            from train.unicorn.vqa_eval import evaluate_text_reading

            lmv = lmv or EmbeddingVLM.from_pretrained(lm_world).eval()  # loaded once for every file
            reading_file.write_text(json.dumps(evaluate_text_reading(lmv.lm, lmv.tokenizer, path), indent=1))
        reading[split] = json.loads(reading_file.read_text())
        base_file = outp / f"baselines_{split}.json"
        if not base_file.is_file():  # what could be looked up in the training text, and an answer prior
            from train.unicorn.overlap import majority_baseline, overlap_stats

            if train_text is None:
                train_text = training_text(n_objects, held, text_steps, align_steps, instruct_steps)
            base_file.write_text(json.dumps({"overlap": overlap_stats(path, train_text),
                                             "majority": majority_baseline(path, train_text)}, indent=1))
        baselines[split] = json.loads(base_file.read_text())

    results = {}
    for variant in variants:
        vdir = outp / variant
        res_file = vdir / "vlm" / "vqa_results.json"
        if not res_file.is_file():
            t = time.time()
            extra = _variant_args(variant, noise_std)
            if not (vdir / "align" / "vlm_config.json").is_file():
                _fit("configs/unicorn/toy_align.yaml", common + extra + [
                    f"--model.init_args.init_from={lm_world}", f"--model.init_args.export_dir={vdir / 'align'}",
                    *_steps(align_steps), f"--trainer.logger.init_args.name={variant}-align",
                    f"--model.init_args.align_train_lm={str(align_train_lm).lower()}"])
            shutil.rmtree(vdir / "vlm", ignore_errors=True)
            _fit("configs/unicorn/toy_instruct.yaml", common + extra + [
                f"--model.init_args.init_from={vdir / 'align'}", f"--model.init_args.export_dir={vdir / 'vlm'}",
                f"--model.init_args.eval_jsonl={vqa}", *_steps(instruct_steps),
                f"--trainer.logger.init_args.name={variant}-instruct"])
            timings[variant] = time.time() - t
        r = json.loads(res_file.read_text())
        results[variant] = {"in_fit": {"accuracy": r["accuracy"], "n": r["n"]}}
        if r.get("setting", {}).get("text_mean_n") is not None:  # captions behind μ_T (stage A + B, warm-up)
            results[variant]["text_mean_n"] = r["setting"]["text_mean_n"]
        vlm = None
        for split, path in files.items():
            for blind in (False, True):  # blind: the same VLM with a constant image (what the question gives)
                f = vdir / "vlm" / f"vqa_{split}{'_blind' if blind else ''}.json"
                if not f.is_file():
                    from models.vlm import EmbeddingVLM
                    from train.unicorn.vqa_eval import evaluate_vqa

                    vlm = vlm or EmbeddingVLM.from_pretrained(vdir / "vlm")
                    e = evaluate_vqa(vlm, path, blind=blind)
                    keep = ("accuracy", "by_type", "by_qtype", "n") + (() if blind else ("predictions",))
                    f.write_text(json.dumps({k: e.get(k) for k in keep}, indent=1))
            e, b = (json.loads((vdir / "vlm" / f"vqa_{split}{x}.json").read_text()) for x in ("", "_blind"))
            results[variant][split] = {"accuracy": e["accuracy"], "by_type": e["by_type"],
                                       "by_qtype": e.get("by_qtype", {}), "n": e["n"], "blind": b["accuracy"]}
    timings["total"] = time.time() - t0
    summary = {"gap": gap, "splits": list(files), "results": results, "text_reading": reading,
               "baselines": baselines, "seconds": timings,
               "settings": {"text_steps": text_steps, "align_steps": align_steps, "instruct_steps": instruct_steps,
                            "noise_std": noise_std, "vqa_images": vqa_images, "clip": clip,
                            "align_train_lm": align_train_lm, "n_objects": list(n_objects), "seed": seed,
                            "holdout": held}}
    (outp / "results.json").write_text(json.dumps(summary, indent=1))
    (outp / "results.md").write_text(results_table(summary))
    print(results_table(summary))
    return summary


def eval_files(outp: Path, n_images: int, n_objects: tuple[int, int], holdout: bool,
               splits: tuple[str, ...] | None = None) -> dict[str, Path]:
    """The evaluation files: with ``holdout``, ``val`` (scenes with a validation combination), ``test`` (a test
    combination) and ``in-distribution`` (training combinations only, new renders); else the last one alone.
    Every file has its own scene seed. ``splits``: only these (a development run leaves ``test`` out)."""
    from train.unicorn.vqa_eval import build_world_vqa

    held = list(VAL_COMBOS) + list(TEST_COMBOS)
    specs = {"in-distribution": (987_654_321, None, held if holdout else None)}
    if holdout:
        specs = {"val": (555_000_001, list(VAL_COMBOS), list(TEST_COMBOS)),
                 "test": (555_000_002, list(TEST_COMBOS), list(VAL_COMBOS)), **specs}
    if splits is not None:
        unknown = sorted(set(splits) - set(specs))
        if unknown or "val" in specs and "val" not in splits:
            raise UserError(f"--splits {' '.join(splits)}: choose from {', '.join(specs)} (val is always scored: "
                            f"choices are made on it)")
        specs = {k: v for k, v in specs.items() if k in splits}
    files = {}
    for split, (vseed, combos, avoid) in specs.items():
        folder = outp / ("vqa" if split == "in-distribution" and not holdout else f"vqa_{split}")
        files[split] = folder / "vqa.jsonl"
        if not files[split].is_file():
            build_world_vqa(folder, n_images, seed=vseed, n_objects=n_objects, combos=combos, avoid=avoid)
    return files


def training_text(n_objects: tuple[int, int], held: list[str], text_steps: int, align_steps: int,
                  instruct_steps: int):
    """The text every stage trains on, regenerated from its config's generator and data seed (the first
    ``steps x batch_size`` stream indices of each stage)."""
    import yaml

    from datagen.unicorn.stages import UnicornText
    from train.unicorn.overlap import TrainingText

    out = TrainingText()
    for config, steps in (("toy_text", text_steps), ("toy_align", align_steps), ("toy_instruct", instruct_steps)):
        data = yaml.safe_load((ROOT / "configs" / "unicorn" / f"{config}.yaml").read_text())["data"]["init_args"]
        kw = {k: v for k, v in data["generator"]["init_args"].items() if k != "render_size"}
        gen = UnicornText(**{**kw, "n_objects": tuple(n_objects), "holdout": held or None})
        out.add_stream(gen, int(data.get("seed", 0)), steps * int(data["batch_size"]))
    return out


def _table(summary: dict, split: str) -> list[str]:
    res = {v: r[split] for v, r in summary["results"].items() if split in r}

    def columns(r: dict) -> dict:  # multiple choice / open, then the question families
        return {**r["by_type"], **r.get("by_qtype", {})}

    types = sorted({t for r in res.values() for t in r["by_type"]})
    types += sorted({t for r in res.values() for t in r.get("by_qtype", {})})
    real = res.get("real", {}).get("accuracy")
    n = next(iter(res.values()))["n"] if res else 0
    lines = [f"### {split} ({n} questions)", "",
             "| variant | VQA acc | " + " | ".join(types) + " | % of real | same VLM, constant image |",
             "|---|---|" + "---|" * len(types) + "---|---|"]
    for name, r in res.items():
        rel = f"{100 * r['accuracy'] / real:.0f}%" if real else "-"
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} | "
                     + " | ".join(f"{100 * columns(r).get(t, 0):.1f}" for t in types)
                     + f" | {rel} | {100 * r.get('blind', float('nan')):.1f} |")
    tr = summary.get("text_reading", {}).get(split)
    if tr:
        lines.append(f"| (LM reading the gold caption as text) | {100 * tr['accuracy']:.1f} | "
                     + " | ".join(f"{100 * columns(tr).get(t, 0):.1f}" for t in types) + " | | |")
    base = summary.get("baselines", {}).get(split)
    if base:
        m, o = base["majority"], base["overlap"]
        lines.append(f"| (majority training answer per question type) | {100 * m['accuracy']:.1f} | "
                     + " | ".join(f"{100 * m['by_qtype'].get(t, 0):.1f}" if t in m["by_qtype"] else ""
                                  for t in types) + " | | |")
        lines += ["", f"Seen in training text ({o['training_samples']} samples, {o['training_captions']} distinct "
                      f"captions): captions {o['captions']}/{o['n']}, question-answer pairs {o['qa_pairs']}/{o['n']}, "
                      f"(caption, question, answer) triples {o['triples']}/{o['n']}."]
    return lines + [""]


def results_table(summary: dict) -> str:
    if "splits" not in summary:  # a summary written before the split columns: its one held-out file
        summary = {**summary, "splits": ["held-out"],
                   "results": {v: {"held-out": r} for v, r in summary["results"].items()},
                   "text_reading": {"held-out": summary["text_reading"]} if summary.get("text_reading") else {}}
    lines = []
    for split in summary["splits"]:
        lines += _table(summary, split)
    g = summary["gap"]
    lines.append(f"tiny CLIP modality gap (paired world data, n={g['n']}): |mean gap| {g['gap_norm']:.3f}, "
                 f"mean cos(gap_i, mean gap) {g['mean_cos']:.3f}, energy ratio {g['energy_ratio']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="synthloop unicorn-toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/unicorn-toy")
    p.add_argument("--clip", default="runs/quickstart/clip_final.pt")
    p.add_argument("--variants", nargs="+", default=["real", "mean_shift", "raw", "mean_shift_noise", "ideal"],
                   choices=VARIANTS)
    p.add_argument("--text-steps", type=positive_int, default=600)
    p.add_argument("--align-steps", type=positive_int, default=150)
    p.add_argument("--instruct-steps", type=positive_int, default=300)
    p.add_argument("--noise-std", type=non_negative_float, default=0.05)
    p.add_argument("--vqa-images", type=positive_int, default=300)
    p.add_argument("--n-objects", type=int, nargs=2, default=[1, 1], metavar=("MIN", "MAX"),
                   help="objects per scene in every stage and in the held-out VQA (default: one)")
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation and sampling seed of every stage (the data streams keep the configs' seeds)")
    p.add_argument("--no-holdout", action="store_true",
                   help="train on every colour-shape combination and score one in-distribution file (the toy "
                        "before issue 18); default: the compositional split (val / test / in-distribution)")
    p.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                   help="score only these files (default: val test in-distribution); a development run leaves "
                        "test out, so that test is looked at once")
    p.add_argument("--align-train-lm", action="store_true",
                   help="also train the LM in stage A (off-spec; for LMs too small to be conditioned frozen)")
    a = p.parse_args(argv)
    from datagen.world import WorldConfigError, check_n_objects

    try:
        check_n_objects(tuple(a.n_objects), "--n-objects")
    except WorldConfigError as e:
        p.error(str(e))
    if a.clip != p.get_default("clip") and not Path(a.clip).is_file():
        p.error(f"--clip {a.clip}: no such file (leave --clip out to use, or train, {p.get_default('clip')})")
    import sys

    sys.argv = sys.argv[:1]  # the stages get their own argument lists (LightningCLI warns about a mismatch)
    if not logging.getLogger().handlers:  # run as `python -m train.unicorn.toy`, not through `synthloop`
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for name in ("train", "datagen", "models"):
            logging.getLogger(name).setLevel(logging.INFO)
    run(a.out, a.clip, tuple(a.variants), a.text_steps, a.align_steps, a.instruct_steps, a.noise_std, a.vqa_images,
        align_train_lm=a.align_train_lm, n_objects=tuple(a.n_objects), seed=a.seed, holdout=not a.no_holdout,
        splits=tuple(a.splits) if a.splits else None)


if __name__ == "__main__":
    main()
