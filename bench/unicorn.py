"""Throughput of Unicorn's synthetic data, stages 1-3, online (no shards), on this machine's CPUs.

    python bench/unicorn.py                       # defaults: < 2 min on 2 cores
    python bench/unicorn.py --n_world 5000 --n_lm 32 --lm_max_new_tokens 256 --n_stage3 4096
    python bench/unicorn.py --threads 0           # torch's default threads (one per core) instead of 1

(a) stages 1-2 with the scene world's exact writer (the offline default): stage 1 (captions) and
    stages 1+2 (instructions) through ``GeneratorStream``, then through ``OnlineDataModule`` with
    ``num_workers`` 0 and 1 (steady state: first batch excluded, its latency shown apart);
(b) stages 1-2 with ``TransformersBackend`` on a TINY RANDOM chat LM (``build_tiny_chat_model``: 1
    layer, hidden 32, random weights, CPU). It writes random words, so nearly every sample is
    rejected; the row measures the plumbing (chat template, generate, parsing) and the rejection
    counts, not what a real LLM would achieve. Stage 2 is also run alone on world captions, since
    stage 1 rarely lets a sample through to it;
(c) stage 3 per sample: CLIP text tower encode (``synthloop-tiny-rn64``, the quickstart checkpoint
    ``runs/quickstart/clip_final.pt`` if it exists, else random init; batch 256, tokenisation
    included) and ``modality_transfer`` for each mode on the same batches, in µs/sample; then
    stages 1-3 end to end (world instructions -> encode -> mean shift).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datagen.stream import GeneratorStream, sample_rng, take  # noqa: E402
from datagen.unicorn.stages import UnicornText  # noqa: E402

ROWS: list[tuple[str, str, str, str, str]] = []


def row(section: str, what: str, per_s: float | None, us: float | None, note: str = "") -> None:
    us_s = "-" if us is None else f"{us:,.1f}" if us >= 10 else f"{us:.3f}"
    ROWS.append((section, what, "-" if per_s is None else f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.2f}", us_s,
                 note))
    print(f"  {section:<3} {what:<58} {ROWS[-1][2]:>10} {ROWS[-1][3]:>11}  {note}", flush=True)


def timed_stream(gen, n: int, seed: int = 0) -> tuple[float, list[dict]]:
    take(GeneratorStream(gen, seed=seed + 99), 5)  # warm-up (imports, prompt files, caches)
    t0 = time.perf_counter()
    out = take(GeneratorStream(gen, seed=seed), n)
    return time.perf_counter() - t0, out


def bench_world(n: int) -> None:
    for stage in ("captions", "instructions"):
        dt, out = timed_stream(UnicornText(stage=stage, n_objects=(1, 3)), n)
        dropped = out[-1]["__dropped__"]
        items = sum(len(s.get("items") or ()) for s in out)
        note = f"kept {n}/{n + dropped}" + (f", {items / n:.1f} items/sample" if stage == "instructions" else "")
        label = "stage 1 (captions)" if stage == "captions" else "stages 1+2 (instructions)"
        row("a", f"world writer, {label}, GeneratorStream", n / dt, 1e6 * dt / n, note)


def bench_datamodule(n: int, batch_size: int, workers: list[int]) -> None:
    from train.core.datamodule import OnlineDataModule

    n_batches = max(2, n // batch_size)
    for w in workers:
        dm = OnlineDataModule(generator=UnicornText(stage="instructions", n_objects=(1, 3)), batch_size=batch_size,
                              num_workers=w, seed=0)
        t0 = time.perf_counter()
        it = iter(dm.make_loader(dm.build_stream()))
        next(it)
        t1 = time.perf_counter()
        for _ in range(n_batches - 1):
            next(it)
        dt = time.perf_counter() - t1
        del it
        k = (n_batches - 1) * batch_size
        row("a", f"world writer, stages 1+2, OnlineDataModule num_workers={w}", k / dt, 1e6 * dt / k,
            f"batch {batch_size}; first batch {t1 - t0:.2f} s")


def bench_tiny_lm(n: int, max_new_tokens: int) -> None:
    from datagen.text import TransformersBackend, build_tiny_chat_model
    from datagen.unicorn import parse_instructions
    from datagen.world import dense_caption, sample_scene

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_chat_model(os.path.join(tmp, "tiny_lm"))
        backend = TransformersBackend(path, batch_size=1)
        gen = UnicornText(stage="instructions", backend=backend, max_new_tokens=max_new_tokens, temperature=0.8)
        gen.generate(sample_rng(1, 10**6), 10**6)  # warm-up: load the model
        reasons: Counter = Counter()
        kept = 0
        t0 = time.perf_counter()
        for i in range(n):  # what GeneratorStream does per position, with every attempt counted
            sample = gen.generate(sample_rng(0, i), i)
            reason = gen.validate(sample)
            reasons[reason or "kept"] += 1
            kept += reason is None
        dt = time.perf_counter() - t0
        top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(4))
        row("b", f"TINY RANDOM LM (transformers, CPU), stages 1+2, {max_new_tokens} tok", n / dt, 1e6 * dt / n,
            f"attempts/s; kept {kept}/{n}: {top}")
        # stage 2 alone: world dense captions in, the tiny LM's JSON out, parsed
        rng = np.random.default_rng(0)
        captions = [dense_caption(sample_scene(rng, (1, 3))) for _ in range(n)]
        item_rejects: Counter = Counter()
        n_items = 0
        t0 = time.perf_counter()
        for i, caption in enumerate(captions):
            raw = backend.complete([gen.instruction_prompt.render(caption=caption)], max_new_tokens=max_new_tokens,
                                   temperature=0.8, seed=2 * i + 1)[0]
            items, rejects = parse_instructions(raw, caption)
            item_rejects.update(rejects)
            n_items += len(items)
        dt = time.perf_counter() - t0
        top = ", ".join(f"{k} {v}" for k, v in item_rejects.most_common(4))
        row("b", "TINY RANDOM LM, stage 2 alone on world captions", n / dt, 1e6 * dt / n,
            f"calls/s; valid items {n_items}; rejects: {top}")


def bench_stage3(n: int, batch: int) -> None:
    from datagen.unicorn import MODES, StreamingMean, modality_transfer
    from datagen.world import dense_caption, sample_scene
    from models.clip import create_clip, encode_text_normalized

    ckpt = ROOT / "runs" / "quickstart" / "clip_final.pt"
    bundle = create_clip("synthloop-tiny-rn64", pretrained=str(ckpt) if ckpt.is_file() else None)
    model, tok, dev = bundle.model.eval(), bundle.tokenizer, torch.device("cpu")
    source = "quickstart ckpt" if ckpt.is_file() else "RANDOM init"
    rng = np.random.default_rng(0)
    captions = [dense_caption(sample_scene(rng, (1, 3))) for _ in range(n)]
    encode_text_normalized(model, tok, captions[:batch], dev, batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    u = encode_text_normalized(model, tok, captions, dev, batch_size=batch)
    dt_enc = (time.perf_counter() - t0) / n
    row("c", f"CLIP text encode, tiny-rn64 ({source}), batch {batch}", 1 / dt_enc, 1e6 * dt_enc,
        f"dim {u.shape[1]}, context {tok.context_length}, tokenise included")
    mean = StreamingMean(u.shape[1])
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        mean.update(u[i:i + batch])
    dt_mean = (time.perf_counter() - t0) / n
    row("c", "StreamingMean update (running mu_T)", 1 / dt_mean, 1e6 * dt_mean)
    mu_t = mean.mean
    img = torch.nn.functional.normalize(torch.randn(batch, u.shape[1]) + 0.3, dim=-1)  # stand-in image embeddings
    gen = torch.Generator().manual_seed(0)
    kw = {"raw": {}, "mean_shift": {"text_mean": mu_t}, "mean_shift_noise": {"text_mean": mu_t, "noise_std": 0.02,
                                                                              "generator": gen},
          "ideal": {"text_mean": mu_t, "image_mean": img.mean(0)},
          "realign": {"text_mean": mu_t, "image_emb": img}}
    per_mode = {}
    for mode in MODES:
        batches = [u[i:i + batch] for i in range(0, n - batch + 1, batch)] or [u]
        reps = max(1, 20_000 // (len(batches) * batch))
        modality_transfer(batches[0], mode, **kw[mode])
        t0 = time.perf_counter()
        for _ in range(reps):
            for b in batches:
                modality_transfer(b, mode, **kw[mode])
        dt = (time.perf_counter() - t0) / (reps * sum(len(b) for b in batches))
        per_mode[mode] = dt
        row("c", f"modality_transfer {mode}, batch {batch}", 1 / dt, 1e6 * dt,
            "image stats: random stand-ins" if mode in ("ideal", "realign") else "")
    # stages 1-3 end to end, online: world instructions -> encode -> running mean -> mean shift
    gen3 = UnicornText(stage="instructions", n_objects=(1, 3))
    stream = iter(GeneratorStream(gen3, seed=7))
    m3 = StreamingMean(u.shape[1])
    t0 = time.perf_counter()
    done = 0
    while done < n:
        samples = [next(stream) for _ in range(min(batch, n - done))]
        e = encode_text_normalized(model, tok, [s["caption"] for s in samples], dev, batch_size=batch)
        m3.update(e)
        modality_transfer(e, "mean_shift", text_mean=m3.mean)
        done += len(samples)
    dt = (time.perf_counter() - t0) / n
    row("c", "stages 1-3 end to end (world writer + encode + mean_shift)", 1 / dt, 1e6 * dt,
        f"one process; stage 3 = {100 * (dt_enc + dt_mean + per_mode['mean_shift']) / dt:.0f}% of it")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_world", type=int, default=1500, help="samples per world-writer row (default 1500)")
    ap.add_argument("--dm_n", type=int, default=1024, help="samples per OnlineDataModule row (default 1024)")
    ap.add_argument("--dm_batch", type=int, default=64, help="OnlineDataModule batch size (default 64)")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1], help="num_workers to measure (default 0 1)")
    ap.add_argument("--n_lm", type=int, default=12, help="attempts with the tiny random LM (default 12)")
    ap.add_argument("--lm_max_new_tokens", type=int, default=96, help="tokens per tiny-LM call (default 96)")
    ap.add_argument("--n_stage3", type=int, default=1024, help="captions for the stage-3 rows (default 1024)")
    ap.add_argument("--batch", type=int, default=256, help="stage-3 batch size (default 256)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: per-core figures, robust to other load on the machine; "
                         "0 = torch's default, one per core)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["world", "dm", "lm", "stage3"], help="sections to skip")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "%.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "?"
    print(f"Unicorn synthetic data throughput: {cores} cores, torch threads {torch.get_num_threads()}, CPU only, "
          f"load average {load} at start")
    print(f"  {'':<3} {'what':<58} {'samples/s':>10} {'us/sample':>11}  notes")
    t0 = time.perf_counter()
    if "world" not in args.skip:
        bench_world(args.n_world)
    if "dm" not in args.skip:
        bench_datamodule(args.dm_n, args.dm_batch, args.workers)
    if "lm" not in args.skip:
        bench_tiny_lm(args.n_lm, args.lm_max_new_tokens)
    if "stage3" not in args.skip:
        bench_stage3(args.n_stage3, args.batch)
    print(f"(b) is a tiny RANDOM model: its rates measure the plumbing, not a real LLM; stage 1-2 cost with a real "
          f"LLM is the LLM's.")
    load = "%.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "?"
    print(f"total bench time {time.perf_counter() - t0:.0f} s; load average {load} at the end (with --threads > 1, "
          f"other processes on these cores slow torch's small multi-threaded ops by up to 1000x)")


if __name__ == "__main__":
    main()
