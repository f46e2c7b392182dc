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
``open_clip.create_model(name, pretrained=path)`` loads them directly.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from models.errors import UserError
from models.io import atomic_write, torch_file_problem, unpickling_refusal

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
