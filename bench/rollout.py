"""Vision-Zero rollout throughput: one clue at a time (the reference code) vs our batched rollouts.

    python bench/rollout.py                       # CPU, tiny policy (toy recipe size), target >= 4x
    python bench/rollout.py --policy runs/visionzero_toy/base_policy   # the trained toy base policy
    python bench/rollout.py --gpu-3b              # CUDA, bf16, random LM with Qwen2.5-3B's dimensions

Both modes play the same games through the same engine (``train.visionzero.engine.play_games``,
4 civilians + 1 spy, 2 clue rounds, every civilian votes) with the same policy; only the batching
differs:

* ``sequential``: every clue and every vote is its own ``generate`` call with batch 1 (how the
  released Vision-Zero code generates, the main cost of the method);
* ``batched``: all games of the batch advance together, one ``generate`` call per (round, seat) turn
  and one for all votes, left-padded, KV cache.

Generation lengths are FIXED (``min_new_tokens = max_new_tokens``) so both modes do the same amount of
decoding whatever the (random) model samples; figures are games/s and generated tokens/s.
``--gpu-3b`` builds ``Qwen2ForCausalLM`` with Qwen2.5-3B's dimensions (hidden 2048, 36 layers, 16
heads, 2 KV heads, intermediate 11008, vocab 151936; random weights, bf16) behind the same
``EmbeddingVLM`` (a random tiny CLIP tower, K = 4 visual tokens) and uses the full-length prompts of
``configs/visionzero/prompts/game.yaml``; it prints the same table (< 4 min on an H100).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from datagen.stream import sample_rng  # noqa: E402
from datagen.visionzero import GameSetups, WorldPairs  # noqa: E402
from train.visionzero.engine import Generation, play_games  # noqa: E402


def tiny_policy(policy_path: str | None, tmp: str, prompts_path: str):
    """The toy recipe's policy: a saved one, or a random tiny Llama (world tokenizer) + tiny CLIP tower."""
    from models.vlm import EmbeddingVLM
    from train.visionzero.policy import EmbeddingVLMPolicy

    if policy_path:
        return EmbeddingVLMPolicy(EmbeddingVLM.from_pretrained(policy_path))
    from train.visionzero.sft import build_toy_vlm

    vlm = build_toy_vlm(os.path.join(tmp, "lm"), vision_tower={"type": "open_clip", "model_name": "synthloop-tiny-rn64"},
                        num_visual_tokens=4, token_mode="split",
                        tiny_lm={"hidden": 128, "layers": 3, "heads": 4, "max_positions": 512},
                        prompts_path=prompts_path)
    return EmbeddingVLMPolicy(vlm)


def qwen3b_policy(device: str, layers: int = 36):
    """Random Qwen2.5-3B-sized LM (bf16) behind EmbeddingVLM; the world tokenizer supplies prompt ids."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from models.clip import create_clip  # noqa: F401
    from datagen.text.corpus import world_corpus
    from models.tiny_lm import build_word_tokenizer
    from models.vlm import EmbeddingVLM, VLMConfig, build_vision_tower
    from train.visionzero.policy import EmbeddingVLMPolicy

    tok = build_word_tokenizer(world_corpus(n_scenes=300) + [Path(ROOT / "configs/visionzero/prompts/game.yaml").read_text()])
    cfg = Qwen2Config(hidden_size=2048, num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=2,
                      intermediate_size=11008, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            lm = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    lm.generation_config.pad_token_id = tok.pad_token_id
    lm.generation_config.eos_token_id = tok.eos_token_id
    tower = build_vision_tower({"type": "open_clip", "model_name": "synthloop-tiny-rn64"})
    vlm = EmbeddingVLM(lm, tok, VLMConfig(embed_dim=128, num_visual_tokens=4, token_mode="split"), vision_tower=tower)
    vlm.to(device)
    vlm.projector.to(torch.bfloat16)
    vlm.eval()
    return EmbeddingVLMPolicy(vlm)


def make_fn(policy, mode: str, clue_len: int, vote_len: int, counter: list[int]):
    def fn(requests):
        n = clue_len if requests[0].stage == "clue" else vote_len
        kw = dict(max_new_tokens=n, min_new_tokens=n, temperature=1.0)
        groups = [requests] if mode == "batched" else [[r] for r in requests]
        out: list[Generation] = []
        for g in groups:
            gens = policy.generate([r.prompt for r in g], [r.image for r in g], **kw)
            counter[0] += sum(len(x.data.response_ids) for x in gens)
            out += gens
        return out
    return fn


def run(policy, setups, mode: str, prompts_path: str, clue_len: int, vote_len: int, sync) -> dict:
    counter = [0]
    policy.clear_cache()
    torch.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    play_games(setups, make_fn(policy, mode, clue_len, vote_len, counter), prompts_path=prompts_path)
    sync()
    dt = time.perf_counter() - t0
    return {"mode": mode, "games": len(setups), "seconds": dt, "games_per_s": len(setups) / dt,
            "tokens_per_s": counter[0] / dt, "tokens": counter[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Vision-Zero rollout throughput: sequential (batch 1) vs batched")
    ap.add_argument("--gpu-3b", action="store_true", help="CUDA bf16, random LM with Qwen2.5-3B's dimensions")
    ap.add_argument("--policy", default=None, help="a saved EmbeddingVLM folder (CPU mode; default: random tiny)")
    ap.add_argument("--games", type=int, default=None, help="games in the batched run (CPU 32, GPU 64)")
    ap.add_argument("--seq-games", type=int, default=None, help="games in the sequential run (CPU 8, GPU 3)")
    ap.add_argument("--clue-tokens", type=int, default=None, help="fixed clue length (CPU 16, GPU 64)")
    ap.add_argument("--vote-tokens", type=int, default=None, help="fixed vote length (CPU 8, GPU 16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=36, help="--gpu-3b: LM depth (36 = Qwen2.5-3B)")
    ap.add_argument("--device", default="cuda", help="--gpu-3b: device (cpu only for a dry run of the code path)")
    a = ap.parse_args(argv)

    gpu = a.gpu_3b
    if gpu and a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu-3b needs CUDA")
    torch.set_num_threads(a.threads)
    n_games = a.games or (64 if gpu else 32)
    n_seq = a.seq_games or (3 if gpu else 8)
    clue_len = a.clue_tokens or (64 if gpu else 16)
    vote_len = a.vote_tokens or (16 if gpu else 8)
    prompts = str(ROOT / "configs/visionzero/prompts" / ("game.yaml" if gpu else "game_toy.yaml"))
    sync = torch.cuda.synchronize if gpu and a.device == "cuda" else (lambda: None)
    t_build = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy = qwen3b_policy(a.device, a.layers) if gpu else tiny_policy(a.policy, tmp, prompts)
        build_s = time.perf_counter() - t_build
        games = GameSetups(WorldPairs(size=64, n_objects=(2, 3) if not gpu else (4, 6)), n_civilians=4, rounds=2)
        setups = [games.setup(sample_rng(99, i), i) for i in range(max(n_games, n_seq))]
        with torch.inference_mode():
            run(policy, setups[:2], "batched", prompts, 4, 4, sync)  # warm-up (kernels, allocator, caches)
            seq = run(policy, setups[:n_seq], "sequential", prompts, clue_len, vote_len, sync)
            bat = run(policy, setups[:n_games], "batched", prompts, clue_len, vote_len, sync)
    n_params = sum(p.numel() for p in policy.vlm.lm.parameters())
    dev = torch.cuda.get_device_name() if gpu and a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nVision-Zero rollouts: 4 civilians + 1 spy, 2 clue rounds, fixed lengths clue={clue_len} / "
          f"vote={vote_len} tokens")
    print(f"device: {dev}; LM: {n_params / 1e6:.1f} M params ({'bf16' if gpu else 'fp32'}); build {build_s:.0f} s")
    print(f"{'mode':<12}{'games':>7}{'seconds':>10}{'games/s':>10}{'tokens/s':>11}")
    for r in (seq, bat):
        print(f"{r['mode']:<12}{r['games']:>7}{r['seconds']:>10.1f}{r['games_per_s']:>10.3f}{r['tokens_per_s']:>11.0f}")
    print(f"speed-up (games/s, batched / sequential): {bat['games_per_s'] / seq['games_per_s']:.1f}x"
          + ("" if gpu else "  (target >= 4x)"))


if __name__ == "__main__":
    main()
