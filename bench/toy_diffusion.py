"""Can a small text-to-image diffusion model learn the style-shifted world in about 15 CPU minutes?

    python bench/toy_diffusion.py --train-minutes 15 --out runs/toy_diffusion

Issue 17 prefers, as the toy's replay generator, a small diffusers text-to-image model trained on world
renders of another style (and digits from another source), over a procedural generator. This bench
tries exactly that and measures whether it worked:

* **training data**: ``world_styled`` renders (dark textured backgrounds, shifted shaded colours, blur,
  noise, font digits: ``datagen/gift/styled.py``) of the prompts a toy replay set draws from -- every
  family's first-template class prompt (half the images) and the world base prompts (the other half);
  32 px; seeds below 10**6 (evaluation renders use seeds from 10**7 up);
* **model**: a pixel-space ``diffusers.UNet2DConditionModel`` (3 levels, 32/64/64 channels, 1.7 M parameters,
  cross-attention at the two lower levels), noise prediction under ``DDPMScheduler`` (1000 steps,
  cosine schedule), conditioned on the *frozen* text tower of the quickstart CLIP (the pooled prompt
  embedding as one context token, as SD conditions on a frozen CLIP text encoder); the empty prompt's
  embedding replaces the prompt 10 % of the time (classifier-free guidance); AdamW, EMA of the weights;
  trained for a fixed wall-clock budget;
* **sampling**: ``DDIMScheduler`` from the training schedule, ``--steps`` steps, guidance ``--guidance``.

Measured, per task family:

* **prompt fidelity**: does a sample show what its prompt says? Two judges, each a standardised
  logistic-regression probe fitted on ``--fit-per-class`` fresh ``world_styled`` renders of each class prompt
  (labels = the prompted class): one on the quickstart CLIP's image features (the model GIFT starts
  from), one on the 32 px pixels themselves. Each scores (a) other fresh styled renders (the ceiling:
  what the procedural generator gives) and (b) the diffusion model's samples of the same prompts.
  Chance = 1 / classes;
* **gap to the evaluation images**: Fréchet distance and domain-classifier accuracy vs the family's
  evaluation (test) images in the CLIP's feature space, as in ``bench/replay_gap.py``.

Decision rule, fixed before the first run: the diffusion model replaces the procedural generator in the
toy only if its mean fidelity is within 10 points of the styled renders' mean fidelity. The mean is
taken, for each judge, over the families whose styled renders that judge reads at least 20 points
above chance, and the rule must hold for both judges. (The first evaluation used unscaled CLIP features
only, fitted on 24 renders per class; that judge read even the styled renders near chance for digits and
shapes, so the scaler, the pixel judge and a larger fitting set (``--fit-per-class``) were added; the
diffusion model itself was not changed.)

Writes ``unet/`` and ``scheduler/`` (diffusers ``save_pretrained``), ``samples.png`` (one row per family),
``loss.png``, ``results.json``, ``train_log.json``; prints a table. ``--load-unet DIR`` re-evaluates a
UNet trained before, without training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_gap import FAMILIES, domain_accuracy, frechet  # noqa: E402

TRAIN_SEED_MAX = 10**6
EVAL_SEED_BASE = 10**7


def class_prompts(fam) -> list[str]:
    return [fam.templates[0].format(c) for c in fam.classnames]


def to_tensor(images, size: int):
    import torch

    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(x):
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def build_unet(dim: int, size: int, channels: tuple[int, int, int]):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=32)


def train(a, styled, fam_prompts, base_prompts, index, emb, null, dim, sched, rng):
    """Render the training set and train the UNet for ``a.train_minutes``; returns the EMA model and the log."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    # --- training renders (styled, 32 px, seeds < 10**6) --------------------------------------------
    t0 = time.time()
    picks = [fam_prompts[rng.integers(len(fam_prompts))] if rng.random() < 0.5
             else base_prompts[rng.integers(len(base_prompts))] for _ in range(a.train_images)]
    seeds = rng.choice(TRAIN_SEED_MAX, size=a.train_images, replace=False).tolist()
    imgs = []
    for lo in tqdm(range(0, a.train_images, 500), desc="render training set", unit="x500"):
        imgs += styled.generate(picks[lo:lo + 500], seeds[lo:lo + 500])
    x_train = to_tensor(imgs, a.size)
    y_train = torch.tensor([index[q] for q in picks])
    render_s = time.time() - t0
    print(f"rendered {a.train_images} training images at {a.size} px in {render_s:.0f} s", flush=True)

    # --- train ---------------------------------------------------------------------------------------
    unet = build_unet(dim, a.size, a.channels)
    n_params = sum(q.numel() for q in unet.parameters())
    ema = build_unet(dim, a.size, a.channels)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.0)
    losses, step = [], 0
    budget = a.train_minutes * 60.0
    t0 = time.time()
    bar = tqdm(total=int(budget), desc="train (s of budget)", unit="s")
    unet.train()
    while time.time() - t0 < budget:
        ix = torch.randint(len(x_train), (a.batch_size,))
        x0 = x_train[ix]
        # no horizontal flips: left/right order is what the relation family's classes say
        cond = emb[y_train[ix]].clone()
        drop = torch.rand(a.batch_size) < 0.1
        cond[drop] = null
        t = torch.randint(0, 1000, (a.batch_size,))
        noise = torch.randn_like(x0)
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=cond[:, None, :]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        lr = a.lr * min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        step += 1
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pu in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(pu.detach(), alpha=1 - d)
        losses.append(loss.detach().item())
        if int(time.time() - t0) > bar.n:  # one refresh a second, not one a step
            bar.n = int(time.time() - t0)
            bar.set_postfix(step=step, loss=f"{np.mean(losses[-50:]):.4f}")
            bar.refresh()
    bar.close()
    train_s = time.time() - t0
    print(f"trained {step} steps ({step * a.batch_size / a.train_images:.1f} epochs) in {train_s:.0f} s; "
          f"{n_params / 1e6:.2f} M parameters; loss (last 200 steps) {np.mean(losses[-200:]):.4f}", flush=True)
    return ema, n_params, losses, step, train_s, render_s


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="runs/quickstart/clip_final.pt")
    p.add_argument("--model-name", default="synthloop-tiny-rn64")
    p.add_argument("--out", default="runs/toy_diffusion")
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train-minutes", type=float, default=15.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, nargs=3, default=[32, 64, 64],
                   help="UNet block widths (32/64/64 at batch 32: ~0.5 s a step on 2 cores; 64/128/128: ~3.5 s)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--per-class", type=int, default=16,
                   help="diffusion samples (and styled reference renders) per class prompt that the probes score")
    p.add_argument("--fit-per-class", type=int, default=200,
                   help="styled renders per class prompt that the probes are fitted on (rendering is cheap)")
    p.add_argument("--eval-seed", type=int, default=20261203)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load-unet", default=None,
                   help="evaluate a UNet this bench trained before (its --out folder) instead of training one")
    a = p.parse_args()

    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler, DDPMScheduler
    from tqdm import tqdm

    from datagen.gift import StyledWorldT2I
    from datagen.gift.prompts import world_base_prompts
    from datagen.world import build_eval_set, get_task_family
    from models.clip import create_clip

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    bundle = create_clip(a.model_name, pretrained=a.clip)
    clip, preprocess, tok = bundle.model.eval(), bundle.preprocess_val, bundle.tokenizer
    for q in clip.parameters():
        q.requires_grad_(False)

    fams = {name: get_task_family(name) for name in FAMILIES}
    fam_prompts = sorted({q for f in fams.values() for q in class_prompts(f)})
    base_prompts = world_base_prompts()
    all_prompts = fam_prompts + [q for q in base_prompts if q not in set(fam_prompts)]
    with torch.no_grad():
        emb = torch.cat([clip.encode_text(tok(all_prompts[i:i + 256])) for i in range(0, len(all_prompts), 256)])
        null = clip.encode_text(tok([""]))
    emb = F.normalize(emb.float(), dim=-1) * np.sqrt(emb.shape[-1])  # unit-variance coordinates
    null = F.normalize(null.float(), dim=-1) * np.sqrt(emb.shape[-1])
    index = {q: i for i, q in enumerate(all_prompts)}
    dim = emb.shape[-1]

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
    styled = StyledWorldT2I(a.size)
    if a.load_unet:
        from diffusers import UNet2DConditionModel

        ema = UNet2DConditionModel.from_pretrained(Path(a.load_unet) / "unet")
        n_params = sum(q.numel() for q in ema.parameters())
        train_log = json.loads((Path(a.load_unet) / "train_log.json").read_text())
        losses, step, train_s, render_s = train_log["losses"], train_log["steps"], train_log["train_s"], train_log["render_s"]
        print(f"loaded the UNet trained before ({step} steps in {train_s:.0f} s) from {a.load_unet}", flush=True)
    else:
        ema, n_params, losses, step, train_s, render_s = train(a, styled, fam_prompts, base_prompts, index, emb,
                                                               null, dim, sched, rng)
        (out / "train_log.json").write_text(json.dumps({"losses": losses, "steps": step, "train_s": train_s,
                                                        "render_s": render_s}))
    ema.eval()
    ema.save_pretrained(out / "unet")
    sched.save_pretrained(out / "scheduler")
    (out / "conditioning.json").write_text(json.dumps({
        "text_encoder": {"model_name": a.model_name, "checkpoint": os.path.abspath(a.clip)},
        "context": "normalised pooled CLIP text embedding x sqrt(dim), one token; null = the empty prompt"}, indent=1))

    # --- sample ---------------------------------------------------------------------------------------
    ddim = DDIMScheduler.from_config(sched.config)

    @torch.no_grad()
    def sample(prompts: list[str], seeds: list[int]) -> list:
        res = []
        for lo in range(0, len(prompts), 128):
            ps, ss = prompts[lo:lo + 128], seeds[lo:lo + 128]
            x = torch.stack([torch.randn(3, a.size, a.size, generator=torch.Generator().manual_seed(s)) for s in ss])
            c = emb[torch.tensor([index[q] for q in ps])][:, None, :]
            u = null.expand(len(ps), -1)[:, None, :]
            ddim.set_timesteps(a.steps)
            for t in ddim.timesteps:
                e = ema(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c, u])).sample
                ec, eu = e.chunk(2)
                x = ddim.step(eu + a.guidance * (ec - eu), t, x).prev_sample
            res += to_images(x)
        return res

    @torch.no_grad()
    def feats(images) -> np.ndarray:
        f = []
        for i in range(0, len(images), 128):
            xb = torch.stack([preprocess(im.resize((64, 64), 2)) for im in images[i:i + 128]])
            f.append(F.normalize(clip.encode_image(xb).float(), dim=-1).numpy())
        return np.concatenate(f)

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pixels(images) -> np.ndarray:
        return np.stack([np.asarray(im.convert("RGB").resize((a.size, a.size)), np.float32).ravel() for im in images])

    def fidelity(fit_x, fit_labels, labels, ref_x, gen_x) -> tuple[float, float]:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(fit_x, fit_labels)
        return float((probe.predict(ref_x) == labels).mean()), float((probe.predict(gen_x) == labels).mean())

    rows, grid = [], []
    t0 = time.time()
    for name, fam in tqdm(fams.items(), desc="evaluate families"):
        cps = class_prompts(fam)
        k = a.per_class
        prompts = [cps[i % len(cps)] for i in range(k * len(cps))]
        labels = np.array([i % len(cps) for i in range(k * len(cps))])
        fit_prompts = [cps[i % len(cps)] for i in range(a.fit_per_class * len(cps))]
        fit_labels = np.array([i % len(cps) for i in range(a.fit_per_class * len(cps))])
        s_fit = list(range(EVAL_SEED_BASE + 10**6, EVAL_SEED_BASE + 10**6 + len(fit_prompts)))
        s_ref = list(range(EVAL_SEED_BASE + 10**5, EVAL_SEED_BASE + 10**5 + len(prompts)))
        s_gen = list(range(EVAL_SEED_BASE + 2 * 10**5, EVAL_SEED_BASE + 2 * 10**5 + len(prompts)))
        fit, ref = styled.generate(fit_prompts, s_fit), styled.generate(prompts, s_ref)
        gen = sample(prompts, s_gen)
        fit_f, ref_f, gen_f = feats(fit), feats(ref), feats(gen)
        clip_s, clip_d = fidelity(fit_f, fit_labels, labels, ref_f, gen_f)
        pix_s, pix_d = fidelity(pixels(fit), fit_labels, labels, pixels(ref), pixels(gen))
        test, _ = build_eval_set(fam, 30, a.eval_seed, 64, split="test")
        test_f = feats(test)
        row = {"family": name, "classes": len(cps), "images": len(prompts), "chance": 1.0 / len(cps),
               "fidelity_clip_styled": clip_s, "fidelity_clip_diffusion": clip_d,
               "fidelity_pixels_styled": pix_s, "fidelity_pixels_diffusion": pix_d,
               "fd_eval_vs_styled32": frechet(test_f, ref_f), "fd_eval_vs_diffusion": frechet(test_f, gen_f),
               "domain_eval_vs_styled32": domain_accuracy(test_f, ref_f),
               "domain_eval_vs_diffusion": domain_accuracy(test_f, gen_f)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shown = min(8, len(cps))  # prompts cycle through the classes: the first len(cps) are one per class
        grid.append((name, ref[:shown], gen[:shown]))
    eval_s = time.time() - t0

    # --- write ----------------------------------------------------------------------------------------
    from PIL import Image, ImageDraw

    cell = 2 * a.size
    sheet = Image.new("RGB", (cell * 16 + 80, cell * len(grid)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (name, ref_imgs, gen_imgs) in enumerate(grid):
        draw.text((2, r * cell + cell // 2 - 5), name, fill=(0, 0, 0))
        for c, im in enumerate(ref_imgs):
            sheet.paste(im.resize((cell, cell)), (80 + c * cell, r * cell))
        for c, im in enumerate(gen_imgs):
            sheet.paste(im.resize((cell, cell)), (80 + (8 + c) * cell, r * cell))
    sheet.save(out / "samples.png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot(np.arange(50, len(losses) + 1), np.convolve(losses, np.ones(50) / 50, mode="valid"))
    else:  # a run loaded with --load-unet whose raw losses were not kept: the logged running mean
        curve = np.asarray(train_log["curve"], dtype=float)
        ax.plot(curve[:, 0], curve[:, 1])
    ax.set_xlabel("step")
    ax.set_ylabel("noise MSE (50-step mean)")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    # per judge: the families whose styled renders the probe reads at least 20 points above chance
    judged, means, adopt = {}, {}, True
    for judge in ("clip", "pixels"):
        fams_j = [r for r in rows if r[f"fidelity_{judge}_styled"] >= r["chance"] + 0.20]
        judged[judge] = [r["family"] for r in fams_j]
        if not fams_j:
            means[judge] = None
            continue
        ms = float(np.mean([r[f"fidelity_{judge}_styled"] for r in fams_j]))
        md = float(np.mean([r[f"fidelity_{judge}_diffusion"] for r in fams_j]))
        means[judge] = {"styled": ms, "diffusion": md}
        adopt = adopt and md >= ms - 0.10
    if all(v is None for v in means.values()):
        adopt = None
    final_loss = float(np.mean(losses[-200:])) if losses else train_log.get("final_loss_last200")
    summary = {"rows": rows, "judged_families": judged, "mean_fidelity": means, "adopt_diffusion": adopt,
               "train_steps": step, "train_s": train_s, "render_s": render_s, "eval_s": eval_s, "params": n_params,
               "final_loss": final_loss, "torch_threads": torch.get_num_threads(), "args": vars(a)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = ["| family | classes | chance | CLIP probe: styled | CLIP probe: diffusion | pixel probe: styled | "
             "pixel probe: diffusion | FD eval vs styled | FD eval vs diffusion | domain acc. vs styled | "
             "domain acc. vs diffusion |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['classes']} | {100 * r['chance']:.0f}% | "
                     f"{100 * r['fidelity_clip_styled']:.1f}% | {100 * r['fidelity_clip_diffusion']:.1f}% | "
                     f"{100 * r['fidelity_pixels_styled']:.1f}% | {100 * r['fidelity_pixels_diffusion']:.1f}% | "
                     f"{r['fd_eval_vs_styled32']:.3f} | {r['fd_eval_vs_diffusion']:.3f} | "
                     f"{100 * r['domain_eval_vs_styled32']:.0f}% | {100 * r['domain_eval_vs_diffusion']:.0f}% |")
    print("\n".join(lines))
    for judge, m in means.items():
        if m is not None:
            print(f"{judge} probe, mean over {judged[judge]}: styled {100 * m['styled']:.1f}%, "
                  f"diffusion {100 * m['diffusion']:.1f}%")
    verdict = {True: "ADOPT", False: "keep the procedural generator", None: "undecided (styled fidelity near chance)"}
    print(f"decision rule (diffusion within 10 points of styled under each judge): {verdict[adopt]}")
    print(f"wall {time.time() - t_start:.0f} s (render {render_s:.0f}, train {train_s:.0f}, evaluate {eval_s:.0f})")


if __name__ == "__main__":
    main()
