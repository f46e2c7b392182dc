"""``synthloop fit --config <real-scale config> --tiny_random``: the config's code path, offline, on stand-ins.

The real-scale configs name local weights and data that a development machine does not have. With
``--tiny_random`` the command line gains overrides that point the config at tiny randomly initialised
*real architectures* and world data, built once under ``<default_root_dir>/tiny_random/``:

* ``train.unicorn.UnicornVLM``: ``lm_path`` -> a tiny random ``LlamaForCausalLM`` with a Llama-3-style chat
  template (:func:`models.tiny_hf.build_tiny_llama_lm`); the contrastive model -> open_clip ``ViT-B-16`` with
  random weights saved as a local checkpoint (the configs' ViT-bigG-14 is 2.5 B parameters, too large for a
  CPU check); a short μ_T warm-up; ``data.init_args.shards`` -> world caption and instruction shards;
  ``eval_jsonl`` -> a small world VQA file. A stage B config keeps its ``init_from``: point it at the stage
  A export of a tiny-random run.
* ``train.visionzero.VisionZeroSelfPlay`` with ``policy_type: hf_vlm``: ``policy_path`` -> a tiny random
  ``Qwen2_5_VLForConditionalGeneration`` with its real processor (:func:`models.tiny_hf.build_tiny_qwen25_vl`),
  float32.
* Without CUDA: ``trainer.accelerator cpu``, one device, fp32 (DeepSpeed strategies then run over gloo).

Overrides given on the command line after ``--tiny_random`` still win. Every figure of such a run is
meaningless; it checks plumbing (`tests/test_unicorn_real_arch.py`, `tests/test_hf_visionzero.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FLAGS = ("--tiny_random", "--tiny-random")


def _arg_value(argv: list[str], key: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == key and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(key + "="):
            value = arg.split("=", 1)[1]
    return value


def _config(argv: list[str]) -> dict[str, Any]:
    """The merged top-level mapping of the ``--config`` files (later files win, one level deep per section)."""
    import yaml

    from datagen.errors import config_paths

    merged: dict[str, Any] = {}
    for path in config_paths(argv):
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        for k, v in doc.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def apply(argv: list[str]) -> list[str]:
    """``argv`` without the flag and with the stand-in overrides inserted where the flag was (so later
    options still override them); unchanged when the flag is absent."""
    idx = [i for i, a in enumerate(argv) if a in FLAGS]
    if not idx:
        return argv
    import torch

    head, tail = [a for a in argv[:idx[0]] if a not in FLAGS], [a for a in argv[idx[0]:] if a not in FLAGS]
    cfg = _config(argv)
    trainer = cfg.get("trainer") or {}
    model = cfg.get("model") or {}
    data = cfg.get("data") or {}
    margs, dargs = model.get("init_args") or {}, data.get("init_args") or {}
    root_dir = _arg_value(argv, "--trainer.default_root_dir") or trainer.get("default_root_dir") or "runs"
    root = Path(root_dir) / "tiny_random"
    root.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    what: list[str] = []
    cls = str(model.get("class_path", ""))
    if cls.endswith("UnicornVLM"):
        extra += _unicorn(root, margs, dargs, what)
    elif cls.endswith("VisionZeroSelfPlay") and margs.get("policy_type") == "hf_vlm":
        qwen = root / "qwen25_vl"
        if not (qwen / "config.json").is_file():
            from datagen.text.corpus import world_corpus
            from models.tiny_hf import build_tiny_qwen25_vl

            build_tiny_qwen25_vl(qwen, texts=world_corpus(200))
        extra += ["--model.init_args.policy_path", str(qwen), "--model.init_args.dtype", "float32"]
        what.append(f"a tiny random Qwen2.5-VL at {qwen}")
    else:
        raise SystemExit(f"synthloop: error: --tiny_random knows Unicorn (train.unicorn.UnicornVLM) and Vision-Zero "
                         f"on a Hugging Face VLM (policy_type: hf_vlm) configs; this config's model is {cls or '?'}; "
                         "for GIFT use synthloop continual --tiny_random true")
    if not torch.cuda.is_available():
        extra += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"]
        what.append("CPU, 1 device, fp32")
    log.warning("tiny-random: %s; every figure of this run is meaningless", ", ".join(what))
    return head + extra + tail


def _unicorn(root: Path, margs: dict, dargs: dict, what: list[str]) -> list[str]:
    import torch

    out: list[str] = []
    if "lm_path" in margs:
        llama = root / "llama"
        if not (llama / "config.json").is_file():
            from models.tiny_hf import build_tiny_llama_lm

            build_tiny_llama_lm(llama)
        out += ["--model.init_args.lm_path", str(llama)]
        what.append(f"a tiny random Llama at {llama}")
    clip = root / "vit_b16_random.pt"
    if not clip.is_file():
        import open_clip

        from models.clip import save_open_clip_checkpoint

        torch.manual_seed(0)
        save_open_clip_checkpoint(open_clip.create_model("ViT-B-16", pretrained=None), clip, "ViT-B-16")
    out += ["--model.init_args.clip_model", "ViT-B-16", "--model.init_args.clip_checkpoint", str(clip),
            "--model.init_args.text_mean_warmup", "8"]
    what.append(f"open_clip ViT-B-16 with random weights ({clip})")
    if "shards" in dargs:
        shards = root / "shards"
        if not (shards / "manifest.json").is_file():
            from datagen import cli as dgcli

            dgcli.main(["unicorn", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "unicorn" /
                                                   "datagen_world.yaml"), "--out", str(shards), "--n", "32",
                        "--maxcount", "16", "--no_progress"])
        out += ["--data.init_args.shards", str(shards / "shard-{000000..000001}.tar")]
        what.append(f"world caption and instruction shards at {shards}")
    if margs.get("eval_jsonl"):
        vqa = root / "vqa" / "vqa.jsonl"
        if not vqa.is_file():
            from train.unicorn.vqa_eval import build_world_vqa

            build_world_vqa(vqa.parent, n_images=3)
        out += ["--model.init_args.eval_jsonl", str(vqa)]
        what.append(f"a world VQA file at {vqa}")
    return out
