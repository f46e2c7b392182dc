#!/usr/bin/env bash
# The GPU figures of this repository in one go (run on a CUDA machine from the repository root):
#   Vision-Zero rollouts on a Qwen2.5-3B-sized random LM (bench/rollout.py --gpu-3b) and one recipe
#   (Unicorn stage B, Qwen2.5-1.5B-sized LM) under DDP vs ZeRO-3 vs ZeRO-3 + CPU offload (bench/zero3_memory.py).
# Packages the machine lacks may be put in .gpu_site/ (prepended to PYTHONPATH). Logs go to ${OUT:-runs/gpu_checks}.
set -uo pipefail
OUT=${OUT:-runs/gpu_checks}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, pytorch_lightning, deepspeed, open_clip, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', pytorch_lightning.__version__, 'deepspeed', deepspeed.__version__, 'open_clip', open_clip.__version__)" 2>&1 | tail -1 | tee "$OUT/versions.txt"
case "${1:-all}" in all|rollout) timeout 300 python3 bench/rollout.py --gpu-3b 2>&1 | tee "$OUT/rollout.log" | grep -v Warning;; esac
case "${1:-all}" in all|zero3) timeout 420 python3 bench/zero3_memory.py --size qwen2.5-1.5b --steps 12 --warmup 4 --out "$OUT/zero3" 2>&1 | tee "$OUT/zero3.log" | grep -v Warning;; esac
