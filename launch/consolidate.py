#!/usr/bin/env python
"""Consolidate a training checkpoint into plain weights: one command.

    python launch/consolidate.py runs/x/version_0/checkpoints/last.ckpt -o runs/x/model.pt
    python launch/consolidate.py .../last.ckpt -o model.safetensors          # safetensors instead
    python launch/consolidate.py .../last.ckpt --hf-dir runs/x/hf            # models with save_pretrained

``CHECKPOINT`` is what the run wrote: a DeepSpeed checkpoint *directory* (ZeRO-2 or ZeRO-3, any number
of ranks; merged with DeepSpeed's ``zero_to_fp32``) or a single-file Lightning checkpoint (DDP, one
process). The output is the full fp32 state dict of the trained model (by default the LightningModule's
``model.`` submodule, prefix stripped: ``--prefix ''`` keeps every key of the LightningModule):

* ``-o FILE.pt`` / ``.bin``: ``{"state_dict": ..., "model_name": ..., "global_step": ...}``; for CLIP recipes
  this is open_clip's checkpoint format: ``open_clip.create_model(model_name, pretrained=FILE)``
  (after ``import models.clip``);
* ``-o FILE.safetensors``: the bare state dict as safetensors;
* ``--hf-dir DIR``: rebuilds the LightningModule from the checkpoint's hyper-parameters (``_class_path``),
  loads the weights, and calls ``save_pretrained(DIR)`` on ``module.hf_export_model()`` when the module
  defines it (the hook for recipes built on transformers models), else on ``module.model`` if that has
  ``save_pretrained``; a tokenizer/processor attribute with ``save_pretrained`` is saved alongside.

Loading is safe: checkpoint files are read with ``torch.load(weights_only=True)``; DeepSpeed shards are
first checked to contain no pickled classes beyond DeepSpeed's own loss-scaler/enum/fragment records.
Outputs are written atomically (:func:`models.io.atomic_write`: temp file, fsync, rename).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (``python launch/consolidate.py``): the repository's packages
    sys.path.insert(0, str(ROOT))

from models.io import atomic_write  # noqa: E402  (after the sys.path line above)


def _deepspeed_allowlist() -> list:
    from train.core.strategies import deepspeed_safe_globals

    return deepspeed_safe_globals()


def _allowed_names() -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in _deepspeed_allowlist()}


def check_shards(ckpt_dir: Path, tag: str) -> None:
    """Refuse DeepSpeed shards that pickle anything beyond DeepSpeed's own bookkeeping classes."""
    allowed = _allowed_names()
    for shard in sorted((ckpt_dir / tag).glob("*.pt")):
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(shard))) - allowed
        if unsafe:
            raise SystemExit(f"consolidate: {shard} pickles classes outside DeepSpeed's allowlist: "
                             f"{sorted(unsafe)}; refusing to load it")


def _client_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Lightning's own entries (hyper_parameters, global_step, ...) from the rank-0 model-states shard."""
    shards = sorted((ckpt_dir / tag).glob("*model_states.pt"))
    if not shards:
        raise SystemExit(f"consolidate: no model states in {ckpt_dir / tag}")
    first = next((s for s in shards if s.name in ("mp_rank_00_model_states.pt",
                                                   "zero_pp_rank_0_mp_rank_00_model_states.pt")), shards[0])
    with torch.serialization.safe_globals(_deepspeed_allowlist()):
        state = torch.load(first, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items()
            if k in ("hyper_parameters", "hparams_name", "global_step", "epoch", "pytorch-lightning_version")}


def load_full_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(LightningModule state dict in fp32, Lightning client state) from a DeepSpeed dir or a .ckpt file."""
    from models.errors import UserError
    from models.io import load_torch_file
    from train.core.checkpoints import checkpoint_problem

    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise SystemExit(f"consolidate: {path}: {problem}")
    if path.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = (path / "latest").read_text().strip()
        check_shards(path, tag)  # zero_to_fp32 itself loads with weights_only=False: only after this check
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag)
        client = _client_state(path, tag)
    else:
        try:
            ckpt = load_torch_file(path, "checkpoint")
        except UserError as exc:
            raise SystemExit(f"consolidate: {exc}") from None
        state = ckpt["state_dict"]
        client = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states", "lr_schedulers")}
    state = {(k[len("_forward_module."):] if k.startswith("_forward_module.") else k): v.float()
             if v.is_floating_point() else v for k, v in state.items()}
    return state, client


def select(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(state)
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise SystemExit(f"consolidate: no key starts with {prefix!r} (keys look like {list(state)[:3]}); "
                         "use --prefix '' for the whole module")
    return out


def write_weights(state: dict[str, torch.Tensor], client: dict[str, Any], out: Path, source: str) -> None:
    hp = client.get("hyper_parameters") or {}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
        meta = {"source": source, "global_step": str(client.get("global_step", ""))}
        if hp.get("model_name"):
            meta["model_name"] = str(hp["model_name"])
        atomic_write(out, lambda p: save_file(tensors, p, metadata=meta))
    else:
        doc = {"state_dict": state, "model_name": hp.get("model_name"), "global_step": client.get("global_step"),
               "source": source}
        atomic_write(out, lambda p: torch.save(doc, p))
    print(f"wrote {len(state)} tensors ({sum(v.numel() for v in state.values()):,} values) to {out}")


def build_module(client: dict[str, Any]):
    hp = dict(client.get("hyper_parameters") or {})
    class_path = hp.pop("_class_path", None)
    hp.pop("_instantiator", None)
    if not class_path:
        raise SystemExit("consolidate: --hf-dir needs the LightningModule's class: the checkpoint's "
                         "hyper_parameters have no _class_path (runs started by `synthloop fit` record it)")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**hp)


def write_hf(state: dict[str, torch.Tensor], client: dict[str, Any], out_dir: Path) -> None:
    module = build_module(client)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise SystemExit(f"consolidate: the checkpoint does not fit {type(module).__name__}: unexpected keys "
                         f"{unexpected[:5]}")
    if missing:
        print(f"note: {len(missing)} module keys not in the checkpoint (e.g. {missing[:3]}); kept as built")
    hook = getattr(module, "hf_export_model", None)
    target = hook() if callable(hook) else getattr(module, "model", None)
    if target is None or not hasattr(target, "save_pretrained"):
        raise SystemExit(f"consolidate: {type(module).__name__}'s model has no save_pretrained (e.g. an open_clip "
                         "CLIP): write weights with -o instead, or define hf_export_model() on the module")
    out_dir.mkdir(parents=True, exist_ok=True)
    target.save_pretrained(str(out_dir), safe_serialization=True)
    for attr in ("tokenizer", "processor"):
        extra = getattr(module, attr, None)
        if extra is not None and hasattr(extra, "save_pretrained"):
            extra.save_pretrained(str(out_dir))
    print(f"wrote Hugging Face folder {out_dir}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="DeepSpeed checkpoint directory or Lightning .ckpt file")
    ap.add_argument("-o", "--out", help="output weights: .pt/.bin (torch) or .safetensors")
    ap.add_argument("--hf-dir", help="also write a Hugging Face folder (models with save_pretrained)")
    ap.add_argument("--prefix", default="model.",
                    help="keep keys under this LightningModule prefix, stripped (default 'model.'; '' = all)")
    args = ap.parse_args(argv)
    if not args.out and not args.hf_dir:
        ap.error("give -o/--out and/or --hf-dir")
    state, client = load_full_state(args.checkpoint)
    if args.out:
        write_weights(select(state, args.prefix), client, Path(args.out), str(args.checkpoint))
    if args.hf_dir:
        write_hf(state, client, Path(args.hf_dir))


if __name__ == "__main__":
    main()
