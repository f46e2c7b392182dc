"""Why does ``ideal`` score below ``raw``? The inputs each transfer mode feeds the projector, measured (issue 18).

    python bench/unicorn_modes.py                       # the quickstart CLIP, ~1 min on 2 cores
    python bench/unicorn_modes.py --clip runs/quickstart/clip_final.pt --n-train 3000 --n-test 1000

No VLM is trained. With the toy's tiny CLIP and one-object world scenes (the toy's setting):

* training inputs ``x = f(u)``: each mode's formula (``datagen.unicorn.modality_transfer``) on the normalised
  text embeddings ``u`` of training captions; μ_T is their mean, μ_V the mean of an unpaired pool of rendered
  training images (as the toy's ``ideal``); ``real`` feeds centred image embeddings of training renders;
* test inputs ``x' = g(v)``: the normalised image embeddings ``v`` of held-out renders, centred on their own
  mean for ``mean_shift`` and ``real`` and fed as they are for ``raw`` and ``ideal``
  (``UnicornVLM.test_center``, rule ``auto``).

For each mode it prints the norms of both sides, the offset between their means, their spreads, the cosine
of a test caption's training input with its own image's test input, and a linear probe: logistic regressions
fit on the *training inputs* (labels: each object attribute) and scored on the *test inputs*, once as they are
and once with the test inputs rescaled so that their mean norm equals the training inputs' ("scale-equalised").
A mode whose probe gains much from that rescaling was fed inputs at the wrong scale at test time. A nearest
class-centroid rule (centroids of the training inputs) is scored too: it pays for any offset a probe's
intercept can absorb.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ATTRS = ("shape", "color", "size", "material")
MODES = ("real", "raw", "mean_shift", "ideal")


def _embed(bundle, scenes, rng, image_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from datagen.world import dense_caption, render_scene
    from models.clip import encode_text_normalized

    model = bundle.model.eval()
    caps = [dense_caption(s) for s in scenes]
    pix = torch.stack([bundle.preprocess_val(render_scene(s, image_size, rng)) for s in scenes])
    with torch.no_grad():
        img = torch.cat([F.normalize(model.encode_image(pix[i:i + 256]).float(), dim=-1)
                         for i in range(0, len(pix), 256)])
    txt = encode_text_normalized(model, bundle.tokenizer, caps, torch.device("cpu"))
    labels = {a: np.array([s.objects[0].attr(a) for s in scenes]) for a in ATTRS}
    return txt, img, labels


def _scenes(rng, n: int):
    from datagen.world import sample_scene

    return [sample_scene(rng, (1, 1)) for _ in range(n)]


def measure(clip: str, n_train: int, n_test: int, n_pool: int, image_size: int = 64, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression

    from datagen.unicorn.transfer import modality_transfer
    from models.clip import create_clip

    bundle = create_clip("synthloop-tiny-rn64", pretrained=clip)
    rng = np.random.default_rng(seed)
    u_tr, v_tr, y_tr = _embed(bundle, _scenes(rng, n_train), rng, image_size)
    _, v_pool, _ = _embed(bundle, _scenes(rng, n_pool), rng, image_size)
    u_te, v_te, y_te = _embed(bundle, _scenes(rng, n_test), rng, image_size)
    mu_t, mu_v = u_tr.mean(0), v_pool.mean(0)
    out = {"n_train": n_train, "n_test": n_test, "n_pool": n_pool, "gap": float((mu_v - mu_t).norm()),
           "modes": {}}
    for mode in MODES:
        if mode == "real":
            x_tr, x_te = v_tr - v_pool.mean(0), v_te - v_te.mean(0)
            x_te_caption = None
        else:
            def f(u):
                return modality_transfer(u, mode, text_mean=mu_t, image_mean=mu_v)

            x_tr = f(u_tr)
            x_te = v_te - v_te.mean(0) if mode == "mean_shift" else v_te
            x_te_caption = f(u_te)  # the training-side input of each test image's own caption
        n_tr, n_te = x_tr.norm(dim=-1).mean(), x_te.norm(dim=-1).mean()
        rec = {"norm_train": float(n_tr), "norm_test": float(n_te),
               "mean_offset": float((x_tr.mean(0) - x_te.mean(0)).norm()),
               "spread_train": float((x_tr - x_tr.mean(0)).norm(dim=-1).pow(2).mean().sqrt()),
               "spread_test": float((x_te - x_te.mean(0)).norm(dim=-1).pow(2).mean().sqrt())}
        if x_te_caption is not None:
            rec["pair_cos"] = float(F.cosine_similarity(x_te_caption, x_te, dim=-1).mean())
            rec["pair_dist"] = float((x_te_caption - x_te).norm(dim=-1).mean())
        probe, probe_eq, centroid, centroid_eq = {}, {}, {}, {}
        x_te_eq = x_te * (n_tr / n_te)
        for a in ATTRS:
            clf = LogisticRegression(max_iter=3000, C=10.0).fit(x_tr.numpy(), y_tr[a])
            probe[a] = float((clf.predict(x_te.numpy()) == y_te[a]).mean())
            probe_eq[a] = float((clf.predict(x_te_eq.numpy()) == y_te[a]).mean())
            # nearest class centroid of the training inputs: unlike the probe, it pays for any offset or scale
            names = sorted(set(y_tr[a]))
            cents = torch.stack([x_tr[torch.as_tensor(y_tr[a] == c)].mean(0) for c in names])
            for xs, dst in ((x_te, centroid), (x_te_eq, centroid_eq)):
                pred = np.array(names)[torch.cdist(xs, cents).argmin(-1).numpy()]
                dst[a] = float((pred == y_te[a]).mean())
        rec["probe"], rec["probe_scale_equalised"] = probe, probe_eq
        rec["centroid"], rec["centroid_scale_equalised"] = centroid, centroid_eq
        for k in ("probe", "probe_scale_equalised", "centroid", "centroid_scale_equalised"):
            rec[k + "_mean"] = float(np.mean(list(rec[k].values())))
        out["modes"][mode] = rec
    return out


def table(res: dict) -> str:
    lines = [f"n_train {res['n_train']}, n_test {res['n_test']}, image pool {res['n_pool']}; "
             f"‖μ_V − μ_T‖ = {res['gap']:.3f}", "",
             "| mode | ‖x‖ train | ‖x'‖ test | ‖mean x − mean x'‖ | spread train | spread test | cos(f(u), g(v)) "
             "| probe on test inputs (shape/color/size/material) | probe mean | scale-equalised | "
             "nearest centroid (s/c/s/m) | centroid mean | scale-equalised |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in res["modes"].items():
        pc = f"{r['pair_cos']:.3f}" if "pair_cos" in r else "-"
        per = "/".join(f"{100 * r['probe'][a]:.0f}" for a in ATTRS)
        cen = "/".join(f"{100 * r['centroid'][a]:.0f}" for a in ATTRS)
        lines.append(f"| {mode} | {r['norm_train']:.3f} | {r['norm_test']:.3f} | {r['mean_offset']:.3f} | "
                     f"{r['spread_train']:.3f} | {r['spread_test']:.3f} | {pc} | {per} | "
                     f"{100 * r['probe_mean']:.1f} | {100 * r['probe_scale_equalised_mean']:.1f} | {cen} | "
                     f"{100 * r['centroid_mean']:.1f} | {100 * r['centroid_scale_equalised_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="runs/quickstart/clip_final.pt")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-pool", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/unicorn-modes")
    a = p.parse_args()
    res = measure(a.clip, a.n_train, a.n_test, a.n_pool, seed=a.seed)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "modes.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    (Path(a.out) / "modes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
