"""Diagnostic: is spy identification learnable by the toy policy at all, and from what signal?

    python bench/visionzero_probe.py --policy runs/visionzero_toy/base_policy --steps 150

Fine-tunes a COPY of the base policy with supervised cross-entropy on the CORRECT vote
(``\\boxed{spy}``) of simulated games whose clues are the base policy's clue behaviour (captions of
one object of the player's own image, :class:`datagen.visionzero.sft.GameSFTSamples`), and reports
held-out greedy accuracy every ``--every`` steps for three input variants:

* ``full``: the player's image + all clues (what self-play sees);
* ``text_only``: the image replaced by a constant grey one (is the clue text alone enough?);
* ``no_clues``: the real image, clue text replaced by ``none`` (sanity: must stay at chance).

This is an upper bound on what the decision stage can learn from the same number of votes with a
dense, noise-free signal; self-play's policy gradient on ±1 rewards needs more samples. Nothing here
is used for training the recipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datagen.stream import sample_rng  # noqa: E402
from datagen.visionzero import WorldPairs, parse_vote, render_decision_prompt  # noqa: E402
from datagen.visionzero.sft import GameSFTSamples  # noqa: E402

PROMPTS = str(ROOT / "configs/visionzero/prompts/game_toy.yaml")


def vote_example(gen: GameSFTSamples, i: int, seed: int, variant: str):
    rng = sample_rng(seed, i)
    setup = gen.games.setup(rng, i)
    turns = gen.simulate_turns(setup, rng)
    civs = setup.civilians
    seat = civs[int(rng.integers(len(civs)))]
    own = [t for t in turns if t.seat == seat]
    if variant == "no_clues":
        turns, own = [], []
    prompt = render_decision_prompt(setup, seat, turns, own, PROMPTS)
    image = Image.new("RGB", setup.original.size, (128, 128, 128)) if variant == "text_only" else setup.original
    return prompt, image, f"\\boxed{{{setup.spy}}}", setup.spy


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--policy", default="runs/visionzero_toy/base_policy")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--variants", default="full,text_only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blank-spy", action="store_true", help="the spy sees a blank image (revised paper)")
    ap.add_argument("--n-objects", default="2,3")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from models.vlm import EmbeddingVLM
    from train.visionzero.policy import EmbeddingVLMPolicy

    lo, hi = (int(x) for x in a.n_objects.split(","))
    gen = GameSFTSamples(WorldPairs(n_objects=(lo, hi), blank_spy=a.blank_spy), n_civilians=4, rounds=2, prompts_path=PROMPTS)
    for variant in a.variants.split(","):
        torch.manual_seed(0)
        vlm = EmbeddingVLM.from_pretrained(a.policy)
        pol = EmbeddingVLMPolicy(vlm)
        opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=a.lr)
        evalset = [vote_example(gen, i, 999, variant) for i in range(a.eval)]

        def accuracy():
            outs = pol.generate([e[0] for e in evalset], [e[1] for e in evalset], max_new_tokens=8, temperature=0.0,
                                batch_size=100)
            return float(np.mean([parse_vote(o.text, 5) == e[3] for o, e in zip(outs, evalset)]))

        t0 = time.perf_counter()
        print(f"[{variant}] step 0: held-out greedy accuracy {accuracy():.3f}", flush=True)
        k = 0
        for step in range(1, a.steps + 1):
            ex = [vote_example(gen, k + j, 7, variant) for j in range(a.batch)]
            k += a.batch
            t = _tensors(vlm, pol, ex)
            vlm.train()
            out = vlm(image_embeds=pol.embed_images([e[1] for e in ex]), use_cache=False, **t)
            pol.clear_cache()
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            if step % a.every == 0:
                print(f"[{variant}] step {step} ({step * a.batch} votes, {time.perf_counter() - t0:.0f} s): "
                      f"loss {out.loss.item():.3f}, held-out greedy accuracy {accuracy():.3f}", flush=True)


def _tensors(vlm, pol, ex):
    tok = vlm.tokenizer
    rows, labels = [], []
    for prompt, _, target, _ in ex:
        p_ids = tok(pol.format_prompt(prompt), add_special_tokens=False)["input_ids"]
        t_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p_ids + t_ids)
        labels.append([-100] * len(p_ids) + t_ids)
    w = max(map(len, rows))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (w - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (w - len(r)) + [1] * len(r) for r in rows])
    lab = torch.tensor([[-100] * (w - len(r)) + r for r in labels])
    return {"input_ids": ids, "attention_mask": mask, "labels": lab, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


if __name__ == "__main__":
    main()
