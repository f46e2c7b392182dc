"""How far the toy's replay images are from its evaluation images, and whether any evaluation image leaks.

    python bench/replay_gap.py                       # the quickstart CLIP, 30 images per class, order I families
    python bench/replay_gap.py --per-class 30 --out runs/replay_gap.json

Per task family, in the image-feature space of the starting CLIP (``runs/quickstart/clip_final.pt``,
L2-normalised features):

* **FD**: the Fréchet distance between the Gaussians fitted to two image sets (the FID formula, in CLIP
  space): evaluation (test) vs replay drawn by each backend from the family's class prompts (the prompts
  a replay set holds once the family is learned), next to evaluation test vs evaluation validation (two
  draws of the same distribution: the floor);
* **domain accuracy**: 5-fold cross-validated accuracy of a logistic regression telling replay from
  evaluation images (50% = indistinguishable).

Overlap: exact pixel matches (sha256 of the RGB bytes) between the test images and the validation
images, the first ``--train-n`` training images of each family, and the replay images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

FAMILIES = ["digits", "shape", "count", "material", "size", "relation", "color"]


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def domain_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return float(cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=5).mean())


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="runs/quickstart/clip_final.pt")
    p.add_argument("--model-name", default="synthloop-tiny-rn64")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--eval-seed", type=int, default=20261203)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train-n", type=int, default=2000)
    p.add_argument("--out", default="runs/replay_gap.json")
    a = p.parse_args()
    import torch

    from datagen.gift import StyledWorldT2I, WorldT2I
    from datagen.world import TaskSamples, build_eval_set, get_task_family
    from models.clip import create_clip

    t0 = time.time()
    bundle = create_clip(a.model_name, pretrained=a.clip)
    model, preprocess = bundle.model.eval(), bundle.preprocess_val

    @torch.no_grad()
    def feats(images) -> np.ndarray:
        out = []
        for i in range(0, len(images), 128):
            x = torch.stack([preprocess(im) for im in images[i:i + 128]])
            out.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).numpy())
        return np.concatenate(out)

    def sha(im) -> str:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()

    backends = {"world_styled": StyledWorldT2I(a.image_size), "world (old: the evaluation renderer)": WorldT2I(a.image_size)}
    rows, overlap = [], {}
    for name in FAMILIES:
        fam = get_task_family(name)
        test, _ = build_eval_set(fam, a.per_class, a.eval_seed, a.image_size, split="test")
        val, _ = build_eval_set(fam, a.per_class, a.eval_seed, a.image_size, split="val")
        n = len(test)
        prompts = [fam.templates[0].format(fam.classnames[i % fam.n_classes]) for i in range(n)]
        replay = {k: b.generate(prompts, list(range(10_000, 10_000 + n))) for k, b in backends.items()}
        train = TaskSamples(name, image_size=a.image_size, split="train")
        train_images = [train.generate(np.random.default_rng([7, i]), i)["image"] for i in range(a.train_n)]
        test_h = {sha(im) for im in test}
        overlap[name] = {"test_images": len(test_h), "test_in_val": len(test_h & {sha(im) for im in val}),
                         "test_in_train_first_n": len(test_h & {sha(im) for im in train_images}),
                         **{f"test_in_replay[{k}]": len(test_h & {sha(im) for im in ims}) for k, ims in replay.items()}}
        ft, fv = feats(test), feats(val)
        row = {"family": name, "n": n, "fd_test_vs_val": frechet(ft, fv), "domain_test_vs_val": domain_accuracy(ft, fv)}
        for k, ims in replay.items():
            fr = feats(ims)
            row[f"fd[{k}]"], row[f"domain[{k}]"] = frechet(ft, fr), domain_accuracy(ft, fr)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "overlap": overlap, "args": vars(a)}, indent=1))
    keys = list(backends)
    lines = ["| family | images | FD test vs val | " + " | ".join(f"FD test vs {k}" for k in keys)
             + " | domain acc. test vs val | " + " | ".join(f"domain acc. vs {k}" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys) + "---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['family']} | {r['n']} | {r['fd_test_vs_val']:.3f} | "
                     + " | ".join(f"{r[f'fd[{k}]']:.3f}" for k in keys)
                     + f" | {100 * r['domain_test_vs_val']:.0f}% | "
                     + " | ".join(f"{100 * r[f'domain[{k}]']:.0f}%" for k in keys) + " |")
    print("\n".join(lines))
    print("overlap (exact pixel matches):", json.dumps(overlap))
    print(f"wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
