"""Peak GPU memory and tokens/s of one recipe under DDP vs DeepSpeed ZeRO-3 (and ZeRO-3 + CPU offload).

The recipe is Unicorn stage B (instruction tuning: projector + full LM, AdamW, bf16-mixed) on the online
world stream, with a randomly initialised LM of a real model's dimensions (default Qwen2.5-1.5B: hidden
1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, vocabulary 151,936 -> 1.54 B parameters) behind the same
projector. Every strategy runs the same command (``synthloop fit --config configs/unicorn/toy_instruct.yaml``
plus overrides) as a separate process, so peaks do not leak between runs::

    python bench/zero3_memory.py                       # GPU: ddp, deepspeed_stage_3, launch/deepspeed/zero3_offload.json
    python bench/zero3_memory.py --size tiny --steps 6 --accelerator cpu --strategies ddp   # plumbing check

On one GPU ZeRO-3 has nobody to shard with: its saving there comes from keeping bf16 parameters with the
fp32 master copy inside the optimizer (and, with offload, from moving optimizer state and parameters
to CPU memory). With N GPUs the model states divide by N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    # name: (hidden, layers, heads, kv heads, intermediate, vocab)
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936),
    "qwen2.5-3b": (2048, 36, 16, 2, 11008, 151936),
    "tiny": (64, 2, 4, 2, 128, 2048),
}


def build_model(path: Path, size: str) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from datagen.text.corpus import world_corpus
    from models.tiny_lm import build_word_tokenizer
    from models.vlm import VLMConfig, EmbeddingVLM

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    tok = build_word_tokenizer(world_corpus(300))
    vocab = max(vocab, len(tok) + 8)
    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=size != "qwen2.5-3b",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        lm = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    n_params = sum(p.numel() for p in lm.parameters())
    vlm = EmbeddingVLM(lm, tok, VLMConfig(embed_dim=128))
    vlm.save_pretrained(path)
    del vlm, lm
    return n_params


def run_one(model_dir: Path, strategy: str, args, out_json: Path) -> dict:
    cb = json.dumps({"class_path": "train.core.callbacks.ThroughputMonitor",
                     "init_args": {"skip_first": args.warmup, "out_json": str(out_json)}})
    if strategy.endswith(".json"):  # a DeepSpeed JSON config (e.g. launch/deepspeed/zero3_offload.json)
        strat = ["--trainer.strategy=pytorch_lightning.strategies.DeepSpeedStrategy",
                 f"--trainer.strategy.config={ROOT / strategy}"]
    else:
        strat = [f"--trainer.strategy={strategy}"]
    cmd = [sys.executable, "-m", "train.cli", "fit", "--config", str(ROOT / "configs/unicorn/toy_instruct.yaml"),
           f"--trainer.accelerator={args.accelerator}", "--trainer.devices=1", *strat,
           f"--trainer.precision={args.precision}", f"--trainer.max_steps={args.steps}",
           "--trainer.enable_checkpointing=false", "--trainer.logger=false", f"--trainer.callbacks=[{cb}]",
           f"--trainer.default_root_dir={out_json.parent}",
           f"--model.init_args.init_from={model_dir}", "--model.init_args.clip_checkpoint=null",
           "--model.init_args.export=false", "--model.init_args.eval_jsonl=null", "--model.init_args.lr=1e-5",
           f"--data.init_args.batch_size={args.batch_size}", "--data.init_args.num_workers=2"]
    t = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))))
    wall = time.time() - t
    if proc.returncode != 0 or not out_json.is_file():
        tail = (proc.stdout + proc.stderr)[-2500:]
        return {"strategy": strategy, "error": tail, "wall_s": wall}
    stats = json.loads(out_json.read_text())
    stats.update(strategy=strategy, wall_s=wall)
    return stats


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="qwen2.5-1.5b", choices=sorted(SIZES))
    p.add_argument("--strategies", nargs="+",
                   default=["ddp", "deepspeed_stage_3", "launch/deepspeed/zero3_offload.json"],
                   help="strategy names, or DeepSpeed JSON configs (paths ending in .json)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--out", default=None, help="folder for the JSON results (default: a temp dir)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    out = Path(args.out or tempfile.mkdtemp(prefix="zero3_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / f"vlm-{args.size}"
    t = time.time()
    n_params = build_model(model_dir, args.size)
    print(f"model: {args.size}, {n_params / 1e9:.3f} B parameters (LM), built in {time.time() - t:.0f} s", flush=True)
    rows = []
    for strategy in args.strategies:
        r = run_one(model_dir, strategy, args, out / f"{Path(strategy).stem}.json")
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "error"}), flush=True)
        if "error" in r:
            print(f"--- {strategy} failed:\n{r['error']}", flush=True)
    print(f"\n{'strategy':28s} {'peak alloc GiB':>15s} {'peak reserved GiB':>18s} {'tokens/s':>10s} {'steps/s':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['strategy']:28s} {'failed':>15s}")
            continue
        print(f"{r['strategy']:28s} {r.get('peak_mem_gib', float('nan')):15.2f} "
              f"{r.get('peak_reserved_gib', float('nan')):18.2f} {r.get('tokens_per_s', float('nan')):10.0f} "
              f"{r.get('steps_per_s', float('nan')):8.2f}")
    (out / "summary.json").write_text(json.dumps({"size": args.size, "n_params": n_params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
