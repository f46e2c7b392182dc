"""UniFilter scoring throughput: samples/s of the scorer at several batch sizes, next to what a trainer consumes.

    python bench/unifilter_throughput.py                                 # the toy scorer, CPU
    python bench/unifilter_throughput.py --scorer runs/unifilter-toy/version_0/scorer --device cuda
    python bench/unifilter_throughput.py --shards 'pool/shard-{000000..000003}.tar'   # + `synthloop score` end to end

Scores ``--samples`` world captions (``datagen.unifilter.LevelCaptions``, images preprocessed beforehand, so
the figure is the model's) under ``torch.no_grad`` at each ``--batch-sizes`` entry, after one warm-up batch,
and prints samples/s. With ``--shards`` it also times the whole ``synthloop score`` path (tar reading, decoding,
preprocessing, Parquet writing) on those shards. Without ``--scorer`` it builds the toy scorer
(``models.unifilter.tiny_scorer``, the defaults of ``configs/unifilter/toy.yaml``) with random weights: speed
does not depend on the weights. Compare the figure with the trainer's consumption rate (its ``samples/s`` in
the progress log; the quickstart's CLIP pre-training reads about 230 samples/s on this machine's 2 cores): an
online filter keeping a fraction ``k`` must score ``rate / k`` samples per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scorer", default=None, help="a save_pretrained scorer folder (default: the toy, random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--shards", default=None, help="also time `synthloop score` on these shards")
    a = p.parse_args()

    from datagen.generator import sample_rng
    from datagen.text.corpus import world_corpus
    from datagen.unifilter import LevelCaptions
    from models.unifilter import UniFilterScorer, tiny_scorer
    from train.unifilter.module import VOCAB_SCENES

    if a.scorer:
        scorer = UniFilterScorer.from_pretrained(a.scorer)
    else:
        scorer = tiny_scorer(world_corpus(n_scenes=VOCAB_SCENES))  # the toy trainer's vocabulary
    scorer = scorer.to(a.device).eval()
    gen = LevelCaptions(image_size=a.image_size)
    samples = [gen.generate(sample_rng(7, i), i) for i in range(a.samples)]
    texts = [f"{scorer.config.image_token} {s['txt']}" for s in samples]
    pixels = torch.stack([scorer.preprocess(s["image"]) for s in samples])
    n_params = sum(p.numel() for p in scorer.parameters()) / 1e6
    print(f"scorer: {a.scorer or 'toy (random)'}, {n_params:.1f} M parameters, device {a.device}, "
          f"torch threads {torch.get_num_threads()}, {a.samples} samples")
    print("| batch | samples/s | ms/sample |\n|---|---|---|")
    for bs in a.batch_sizes:
        with torch.no_grad():
            scorer.score(texts[:bs], pixels[:bs].to(a.device))  # warm-up
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, a.samples, bs):
                scorer.score(texts[i:i + bs], pixels[i:i + bs].to(a.device))
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        print(f"| {bs} | {a.samples / dt:.1f} | {1000 * dt / a.samples:.2f} |")
    if a.shards:
        from train.unifilter.shards import score_shards

        with tempfile.TemporaryDirectory() as tmp:
            folder = a.scorer
            if folder is None:
                folder = f"{tmp}/scorer"
                scorer.cpu().save_pretrained(folder)
            s = score_shards(folder, a.shards, f"{tmp}/scores", batch_size=max(a.batch_sizes), device=a.device,
                             progress=False)
        print(f"synthloop score end to end: {s['samples']} samples in {s['seconds']:.1f} s = "
              f"{s['samples_per_s']:.1f} samples/s (batch {max(a.batch_sizes)})")


if __name__ == "__main__":
    main()
