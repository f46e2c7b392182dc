"""Throughput of the scene world: sample + render + caption, images/s on ONE core.

    python bench/world.py                 # 64 px (target >= 1,500 images/s), plus 32 and 224 px
    python bench/world.py --size 64 --n 5000

Each row times ``sample_scene`` (2-6 objects) + ``render_scene`` + one caption (seed or dense).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Pin to one core *before* numpy/torch spin up thread pools, so the figure is per core.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from datagen.world import dense_caption, render_scene, sample_scene, seed_caption  # noqa: E402

TARGET_64 = 1500.0


def bench(size: int, n: int, caption: str, seed: int = 0) -> float:
    """Images/s for ``n`` scenes of 2-6 objects rendered at ``size`` px with a ``caption`` caption."""
    rng = np.random.default_rng(seed)
    for _ in range(50):  # warm-up: imports, caches, allocator
        s = sample_scene(rng, (2, 6))
        render_scene(s, size, rng)
    t0 = time.perf_counter()
    for _ in range(n):
        scene = sample_scene(rng, (2, 6))
        render_scene(scene, size, rng)
        seed_caption(scene, rng) if caption == "seed" else dense_caption(scene)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="scenes per measurement (default 2000)")
    ap.add_argument("--size", type=int, nargs="*", default=[64, 32, 224], help="image sizes (default 64 32 224)")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is not needed by the world itself
        pass
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"scene world bench: n={args.n} scenes of 2-6 objects per row, cores={cores}")
    print(f"{'size':>5}  {'caption':>7}  {'images/s':>9}  {'ms/image':>8}")
    for size in args.size:
        for caption in ("seed", "dense"):
            ips = bench(size, args.n, caption)
            flag = ""
            if size == 64:
                flag = "  ok" if ips >= TARGET_64 else f"  BELOW TARGET {TARGET_64:.0f}"
            print(f"{size:>5}  {caption:>7}  {ips:>9.0f}  {1000 / ips:>8.3f}{flag}")


if __name__ == "__main__":
    main()
