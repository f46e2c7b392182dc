"""Probe of the Unicorn toy's "pretrained LLM": can the tiny LM answer world questions from the caption text?

    python bench/unicorn_reading.py --steps 600                       # 2 x 128 LM, batch 32, short-answer mix (the toy's text stage)
    python bench/unicorn_reading.py --steps 2000 --bs 16 --lr 3e-3    # longer
    python bench/unicorn_reading.py --layers 4                        # deeper
    python bench/unicorn_reading.py --text_mix all --n_objects 1 3 --vqa V  # the first toy's mix on 1-3 objects

A fresh tiny Llama (``models.tiny_lm.build_tiny_lm``) is trained like ``UnicornVLM(stage="text")``: each
sample is the world writer's caption + instruction items; the LM sees the caption as text in the first
user turn and learns the answers (``UnicornVLM.examples``; ``--text_mix all`` adds the reasoning items
and the caption itself as plain text). The
loop here is plain PyTorch so that sizes and lengths can be varied quickly, and differs from the
Lightning text stage in two ways: gradients are clipped at norm 1, and the LR multiplier is the linear
warm-up (5 % of the steps) times one cosine over the whole run, not ``train.clip.pretrain.warmup_cosine``
(cosine after the warm-up). The reading figures in docs/results/unicorn.md were measured with exactly this loop. It then prints the text-reading accuracy: the LM reads each held-out record's gold
caption as text and answers (``train.unicorn.vqa_eval.evaluate_text_reading``). No transfer mode can push the
VLM above this ceiling. The short-answer mix (the default) leaves out the step-by-step reasoning answers
and the caption-only example, so the few answer tokens are not outweighed by long texts.

Needs ``runs/unicorn-toy/vqa/vqa.jsonl`` (made by ``synthloop unicorn-toy``) and the quickstart CLIP
(``runs/quickstart/clip_final.pt``; only the text tower's tokenizer is used by the text stage).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--questions", type=int, default=300, help="held-out questions evaluated (a fixed random subset)")
    ap.add_argument("--vqa", default="runs/unicorn-toy/vqa/vqa.jsonl")
    ap.add_argument("--clip_checkpoint", default="runs/quickstart/clip_final.pt")
    ap.add_argument("--out", default=None, help="save the trained LM (VLM folder) here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text_mix", choices=("short", "all"), default="short",
                    help="UnicornVLM's text_mix: short-answer items only (the toy's setting) or all items + captions")
    ap.add_argument("--n_objects", type=int, nargs=2, default=[1, 1], metavar=("MIN", "MAX"),
                    help="objects per training scene (match the VQA file's scenes)")
    args = ap.parse_args()

    vqa = Path(args.vqa)
    if not vqa.is_file():
        raise SystemExit(f"{vqa} not found: run `synthloop unicorn-toy` first (it writes the held-out VQA set)")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="unicorn_reading_") as tmp:
        run(args, vqa, Path(tmp))


def run(args: argparse.Namespace, vqa: Path, tmp: Path) -> None:
    from datagen.unicorn.stages import UnicornText
    from datagen.text.corpus import world_corpus
    from models.tiny_lm import build_tiny_lm
    from train.unicorn.module import UnicornVLM
    from train.unicorn.vqa_eval import evaluate_text_reading, load_vqa

    build_tiny_lm(tmp / "lm_init", texts=world_corpus(), hidden=args.hidden, layers=args.layers, heads=args.heads)
    m = UnicornVLM(stage="text", lm_path=str(tmp / "lm_init"), clip_model="synthloop-tiny-rn64",
                   clip_checkpoint=args.clip_checkpoint, text_mix=args.text_mix)
    gen = UnicornText(stage="instructions", n_objects=tuple(args.n_objects))
    params = [p for p in m.vlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warm = max(1, int(0.05 * args.steps))
    rng = np.random.default_rng(100 + args.seed)
    t0 = time.time()
    for step in range(args.steps):
        samples = [gen.generate(rng, step * args.bs + i) for i in range(args.bs)]
        ex = m.examples({"caption": [s["caption"] for s in samples], "items": [s["items"] for s in samples]})
        scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = args.lr * scale
        loss = m.vlm(ex["input_ids"], ex["attention_mask"], labels=ex["labels"]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0

    # a fixed subset of the held-out questions, in the temporary folder with absolute image paths
    records = load_vqa(vqa)
    random.Random(0).shuffle(records)
    subset = tmp / "reading_subset.jsonl"
    with open(subset, "w") as f:
        for r in records[:args.questions]:
            rec = {k: v for k, v in r.items() if k != "image_path"}
            rec["image"] = str(Path(r["image_path"]).resolve())
            f.write(json.dumps(rec) + "\n")
    m.eval()
    result = evaluate_text_reading(m.vlm.lm, m.vlm.tokenizer, subset)
    print(json.dumps({**vars(args), "train_s": round(train_s), "text_reading_acc": round(result["accuracy"], 4),
                      "by_type": {k: round(v, 3) for k, v in {**result["by_type"], **result.get("by_qtype", {})}.items()},
                      "n": result["n"]}))
    if args.out:
        m.vlm.save_pretrained(args.out)


if __name__ == "__main__":
    main()
