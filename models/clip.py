"""CLIP models from open_clip, built by name: the standard ones and tiny ones registered for the world.

Tiny configs live in ``models/model_configs/*.json`` in open_clip's own config format and are
registered with ``open_clip.add_model_config`` on import, so every open_clip tool (including its
own trainer) can build them by name:

* ``synthloop-tiny-vit32``: ViT 4 x 192, patch 4, 32 px; text 3 x 128, context 48 (the quickstart);
* ``synthloop-tiny-vit64``: the same at 64 px with patch 8;
* ``synthloop-tiny-rn64``: open_clip's ModifiedResNet, layers (1,1,1,1), width 32, 64 px; text 3 x 128
  (the quickstart: on the world it grounds shape in half the steps the ViTs need and costs 0.6x per step);
* ``synthloop-micro-vit32``: a 1-layer model for unit tests.

Checkpoints are written in open_clip's format (``{"state_dict": ..., "model_name": ...}``) so
``open_clip.create_model(name, pretrained=path)`` loads them directly. :func:`save_open_clip_local_dir`
also writes open_clip's self-describing ``local-dir:`` folder (``open_clip_config.json`` with the full model
config + ``open_clip_model.safetensors``), which open_clip, its trainer and CLIP_benchmark load by path
alone, in a process that never imports this module (``docs/clip_clients.md``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from models.errors import UserError
from models.io import atomic_write, fsync_dir, torch_file_problem, unpickling_refusal, write_checksums

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

TINY_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


@dataclass
class CLIPBundle:
    """A CLIP model with the transforms and tokenizer that belong to it."""

    model: torch.nn.Module
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    name: str

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def create_clip(
    name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    force_image_size: int | None = None,
) -> CLIPBundle:
    """Build an open_clip model by name.

    Args:
        name: any open_clip model name (``ViT-B-16``, ...) or one of :data:`TINY_MODELS`.
        pretrained: a local checkpoint file (open_clip or OpenAI format), or an open_clip pretrained
            tag where a hub is reachable. ``None`` = random initialisation.
    """
    check_model_name(name)  # a one-line UserError naming the known tiny models
    if pretrained is not None and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        if not Path(pretrained).is_file():
            raise UserError(f"pretrained CLIP checkpoint {pretrained!r} does not exist; give a local file path")
        problem = torch_file_problem(pretrained) if not pretrained.endswith(".safetensors") else None
        if problem is not None:
            raise UserError(f"pretrained CLIP checkpoint {pretrained}: {problem}; re-create it (e.g. rerun the "
                            "run that exported it) or point at another file")
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            force_image_size=force_image_size,
            pretrained_text=False,  # never reach for a hub for tower weights
            weights_only=True,
            output_dict=True,
        )
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a pickled object
        raise UserError(f"refusing to load pretrained CLIP checkpoint {pretrained}: {unpickling_refusal(exc)}; "
                        f"only load checkpoints you trust") from exc
    tokenizer = open_clip.get_tokenizer(name)
    return CLIPBundle(model, preprocess_train, preprocess_val, tokenizer, name)


def check_model_name(name: str, key: str = "model_name") -> str:
    """``name`` when open_clip knows it (synthloop's tiny models included), else a one-line
    :class:`models.errors.UserError` naming ``key`` and the known tiny models."""
    if not isinstance(name, str) or name not in open_clip.list_models():
        raise UserError(f"{key}: unknown CLIP model {name!r}; synthloop's tiny ones are {', '.join(TINY_MODELS)}, "
                        f"open_clip knows {len(open_clip.list_models())} more (python -c 'import open_clip; "
                        f"print(open_clip.list_models())')")
    return name


def save_open_clip_checkpoint(model: torch.nn.Module, path: str | Path, model_name: str, **extra: Any) -> Path:
    """Write ``model`` in open_clip's checkpoint format, atomically and durably (:func:`models.io.atomic_write`)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    doc = {"state_dict": state, "model_name": model_name, **extra}
    atomic_write(path, lambda tmp: torch.save(doc, tmp))
    return path


#: the two files of an open_clip ``local-dir:`` folder (open_clip.factory reads exactly these names)
LOCAL_DIR_CONFIG = "open_clip_config.json"
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"
#: suffix of the ``local-dir:`` folder written beside an exported ``.pt``
#: (``clip_final.pt`` -> ``clip_final.open_clip/``)
LOCAL_DIR_SUFFIX = ".open_clip"


def local_dir_beside(checkpoint: str | Path) -> Path:
    """The ``local-dir:`` folder that belongs to an exported checkpoint file: ``runs/x/clip_final.pt`` ->
    ``runs/x/clip_final.open_clip``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + LOCAL_DIR_SUFFIX)


def open_clip_model_config(model: torch.nn.Module, model_name: str) -> dict[str, Any]:
    """The full open_clip model config of ``model`` (built as ``model_name``), as ``local-dir:`` folders embed it:
    the registry's config, with the image size the model was actually built at (``force_image_size``)."""
    cfg = open_clip.get_model_config(check_model_name(model_name))
    if cfg is None:  # a name open_clip lists but has no config for (cannot happen for registry names)
        raise UserError(f"model_name: open_clip has no model config for {model_name!r}")
    vision = cfg.get("vision_cfg", {})
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is not None and "timm_model_name" not in vision:
        size = tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else int(size)
        vision["image_size"] = size[0] if isinstance(size, tuple) and len(set(size)) == 1 else size
    return cfg


def save_open_clip_local_dir(model: torch.nn.Module, folder: str | Path, model_name: str, tokenizer: Any = None,
                             **extra: Any) -> Path:
    """Write ``model`` as an open_clip ``local-dir:`` folder, atomically; return the folder.

    The folder holds ``open_clip_config.json`` (``model_cfg``: the full config from open_clip's registry, so
    it loads without synthloop's tiny configs being registered; ``preprocess_cfg``: the model's
    mean/std/interpolation/resize mode/size; ``synthloop``: ``model_name`` and ``extra``, ignored by open_clip),
    ``open_clip_model.safetensors`` (the state dict) and ``checksums.sha256``. Any client then loads it by
    path, e.g. ``open_clip.create_model_and_transforms("local-dir:<folder>")``, ``python -m open_clip_train.main
    --model local-dir:<folder>``, ``clip_benchmark eval --model local-dir:<folder> --pretrained ''``.

    The folder is built as ``.<name>.partial-<pid>`` beside it (removed by :func:`models.io.remove_orphans`
    if the writer dies) and renamed into place; an existing folder is replaced only once the new one is
    complete. A model whose tokenizer is a Hugging Face one (``text_cfg.hf_tokenizer_name``) also needs its
    tokenizer files in the folder (open_clip reads them from there): pass ``tokenizer`` (open_clip's
    ``HFTokenizer``, saved with ``save_pretrained``).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    model_cfg = open_clip_model_config(model, model_name)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if "size" in preprocess_cfg:
        size = preprocess_cfg["size"]
        preprocess_cfg["size"] = list(size) if isinstance(size, (tuple, list)) else size
    doc = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg,
           "synthloop": {"model_name": model_name, **extra}}
    text = json.dumps(doc, indent=2, sort_keys=True, default=_json_default) + "\n"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    hf_tokenizer = bool(model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"))
    if hf_tokenizer and not hasattr(tokenizer, "save_pretrained"):
        raise UserError(f"model_name {model_name!r} uses a Hugging Face tokenizer: pass its open_clip tokenizer "
                        f"(open_clip.get_tokenizer(name)) so that {folder} gets the tokenizer files it needs")
    parent = folder.parent if str(folder.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{folder.name}.partial-{os.getpid()}"
    old = parent / f".{folder.name}.old.partial-{os.getpid()}"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        tmp.mkdir()
        save_file(state, str(tmp / LOCAL_DIR_WEIGHTS), metadata={"format": "pt"})
        (tmp / LOCAL_DIR_CONFIG).write_text(text, encoding="utf-8")
        if hf_tokenizer:
            tokenizer.save_pretrained(str(tmp))
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        write_checksums(tmp)
        fsync_dir(tmp)
        replaced = folder.exists() or folder.is_symlink()
        if replaced:
            if not folder.is_dir() or folder.is_symlink():
                raise UserError(f"{folder} exists and is not a folder; remove it or export elsewhere")
            os.replace(folder, old)  # the previous complete folder, until the new one is in place
        try:
            os.replace(tmp, folder)
        except BaseException:
            if replaced:
                os.replace(old, folder)
            raise
        fsync_dir(parent)
    finally:
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


@torch.no_grad()
def encode_text_normalized(model: torch.nn.Module, tokenizer: Any, texts: list[str], device: torch.device,
                           batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, batched."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i : i + batch_size]).to(device)
        out.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_classifier(model: torch.nn.Module, tokenizer: Any, classnames: list[str], templates: list[str],
                         device: torch.device) -> torch.Tensor:
    """Class embeddings (C, D): per class, the renormalised mean of the normalised template embeddings."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encode_text_normalized(model, tokenizer, texts, device).view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)
