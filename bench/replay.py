"""Throughput of GIFT replay-image synthesis (images/s); prints figures, asserts nothing.

    python bench/replay.py                                  # WorldT2I 64 px + tiny diffusers on CPU
    python bench/replay.py --threads 1 --n-world 2000
    python bench/replay.py --model /models/sd15 --steps 50 --scheduler pndm --batch-size 8   # + CUDA row

Rows:
* ``world backend``   -- ``WorldT2I.generate`` alone (prompt parse + render), world pool prompts;
* ``world set``       -- ``make_replay_set`` end to end (render + PNG + shards) into a temp dir;
* ``tiny diffusers``  -- the randomly initialised tiny SD pipeline on CPU (32 px; load time excluded);
* ``paper vs ours``   -- the same pipeline in the reference implementation's setting (batch 1, 50 PNDM
  steps, guidance 7.5) and in ours (batched, DPM-Solver with fewer steps), side by side: on CPU with the
  tiny pipeline, and with ``--sd15-random`` on CUDA with a randomly initialised SD-1.5-sized pipeline at
  512 px in fp16;
* ``cuda model``      -- only with ``--model`` and CUDA: that local pipeline at the given settings.

    python bench/replay.py --sd15-random --ours-batch 16 --ours-steps 20        # on a GPU machine
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download from a bench


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_world(pool, n: int, size: int) -> tuple[float, float]:
    """(backend images/s, end-to-end set images/s) for the world renderer."""
    from datagen.gift import WorldT2I, make_replay_set

    backend = WorldT2I(size)
    draws = pool.sample(n, seed=0)
    prompts, seeds = [p for _, p in draws], list(range(n))
    backend.generate(prompts[:20], seeds[:20])  # warm-up: spec tables, imports
    gen = _rate(lambda: backend.generate(prompts, seeds), n)
    with tempfile.TemporaryDirectory() as tmp:
        full = _rate(lambda: make_replay_set(pool, n, 0, backend, tmp, progress=False), n)
    return gen, full


def bench_diffusers(model: str, pool, n: int, device: str, dtype: str, steps: int, scheduler: str,
                    size: int, batch_size: int) -> tuple[float, float]:
    """(load seconds, images/s) for a diffusers pipeline; the first batch is a warm-up."""
    from datagen.gift import DiffusersT2I

    backend = DiffusersT2I(model=model, scheduler=scheduler, steps=steps, height=size, width=size,
                           batch_size=batch_size, dtype=dtype, device=device, safety_checker=False)
    t0 = time.perf_counter()
    _ = backend.pipe
    load = time.perf_counter() - t0
    prompts = [p for _, p in pool.sample(n + batch_size, seed=1)]
    backend.generate(prompts[:batch_size], list(range(batch_size)))  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    rate = _rate(lambda: backend.generate(prompts[batch_size:], list(range(n))), n)
    return load, rate


def compare(label: str, model: str, pool, device: str, dtype: str, size: int, n: int, args) -> None:
    """Paper setting (batch 1, 50 PNDM steps, guidance 7.5) vs ours (batched DPM-Solver, fewer steps)."""
    _, paper = bench_diffusers(model, pool, n, device, dtype, 50, "pndm", size, 1)
    _, ours = bench_diffusers(model, pool, n, device, dtype, args.ours_steps, "dpm", size, args.ours_batch)
    print(f"{label}: paper setting (batch 1, pndm 50 steps, cfg 7.5) {paper:8.3f} images/s | ours (batch "
          f"{args.ours_batch}, dpm {args.ours_steps} steps, cfg 7.5) {ours:8.3f} images/s | {ours / paper:5.1f}x  "
          f"(n={n}, {dtype})")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--n-world", type=int, default=1000, help="images for the world rows")
    ap.add_argument("--world-size-px", type=int, default=64)
    ap.add_argument("--n-tiny", type=int, default=16, help="images for the tiny diffusers row")
    ap.add_argument("--tiny-steps", type=int, default=2)
    ap.add_argument("--model", default=None, help="local diffusers pipeline directory (CUDA row)")
    ap.add_argument("--n-model", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scheduler", default="pndm", choices=["pndm", "dpm", "ddim", "euler"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--ours-batch", type=int, default=16, help="our batch size in the paper-vs-ours rows")
    ap.add_argument("--ours-steps", type=int, default=20, help="our DPM-Solver steps in the paper-vs-ours rows")
    ap.add_argument("--n-compare-cpu", type=int, default=16)
    ap.add_argument("--n-compare-gpu", type=int, default=32)
    ap.add_argument("--sd15-random", action="store_true",
                    help="also compare on a randomly initialised SD-1.5-sized pipeline at 512 px (CUDA)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    from datagen.gift import build_pool, tiny_diffusers_pipeline
    from datagen.world import TASK_FAMILIES

    world_pool = build_pool("world", [TASK_FAMILIES[n] for n in ("shape", "color", "digits")])
    imagenet_pool = build_pool("imagenet", [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), cuda={torch.cuda.is_available()}")

    gen, full = bench_world(world_pool, args.n_world, args.world_size_px)
    print(f"world backend   {args.world_size_px:4d} px            {gen:9.1f} images/s  (n={args.n_world})")
    print(f"world set       {args.world_size_px:4d} px  png+shards {full:9.1f} images/s  (n={args.n_world})")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tiny = tiny_diffusers_pipeline(os.path.join(tmp, "tiny"))
        build = time.perf_counter() - t0
        for sched in ("pndm", "dpm"):
            load, rate = bench_diffusers(tiny, imagenet_pool, args.n_tiny, "cpu", "fp32", args.tiny_steps, sched,
                                         32, 8)
            print(f"tiny diffusers    32 px {sched:5s} {args.tiny_steps:2d} steps {rate:8.2f} images/s  "
                  f"(n={args.n_tiny}, cpu fp32, batch 8; build {build:.1f}s, load {load:.1f}s)")

    # the reference implementation's setting vs ours, on the same pipeline
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_diffusers_pipeline(os.path.join(tmp, "tiny"))
        compare("cpu tiny 32 px", tiny, imagenet_pool, "cpu", "fp32", 32, args.n_compare_cpu, args)
        if args.sd15_random:
            if not torch.cuda.is_available():
                print("sd15-random: skipped: CUDA is not available")
            else:
                from datagen.gift import sd15_sized_random_pipeline

                sd = sd15_sized_random_pipeline(os.path.join(tmp, "sd15"))
                compare(f"cuda SD-1.5-sized 512 px ({torch.cuda.get_device_name()})", sd, imagenet_pool, "cuda",
                        "fp16", 512, args.n_compare_gpu, args)

    if args.model:
        if not torch.cuda.is_available():
            print(f"cuda model: skipped ({args.model}): CUDA is not available")
        else:
            load, rate = bench_diffusers(args.model, imagenet_pool, args.n_model, "cuda", args.dtype, args.steps,
                                         args.scheduler, args.size, args.batch_size)
            print(f"cuda model     {args.size:4d} px {args.scheduler:5s} {args.steps:2d} steps {rate:8.3f} images/s  "
                  f"(n={args.n_model}, {args.dtype}, batch {args.batch_size}, {torch.cuda.get_device_name()}; "
                  f"load {load:.1f}s) -> 1000 images in {1000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
