"""An embedding-input vision-language model: pooled embedding -> MLP projector -> K tokens -> any HF causal LM.

LLaVA-style, as Unicorn uses it (``docs/specs/unicorn.md``) and Vision-Zero reuses it::

    image_embeds (B, D) --projector (Linear, GELU, Linear)--> (B, H) --repeat K--> (B, K, H)
    text "... <image> ..."  --expand_image_tokens--> "... <image><image>...(K)..."  --> token ids
    token embeddings at the <image> positions are replaced by the K projected tokens -> LM

``token_mode="repeat"`` (the paper: one pooled vector repeated K times, no spatial information) or
``"split"`` (the projector's last layer outputs K*H, i.e. K distinct tokens).

The model takes either ``image_embeds`` (a text-only Unicorn batch: synthetic embeddings) or
``images`` when a ``vision_tower`` is attached (test time, Vision-Zero). The vision tower maps
images to pooled embeddings; :class:`OpenCLIPVisionTower` L2-normalises them and subtracts a
reference mean (``image_mean``), the test-time centring of Unicorn.

Saving: :meth:`EmbeddingVLM.save_pretrained` writes the LM (merged when LoRA is on) and tokenizer in
Hugging Face format, plus ``projector.safetensors``, ``vlm_config.json`` and, when present,
``vision_tower.safetensors`` and ``text_mean.safetensors`` (:attr:`EmbeddingVLM.text_mean_state`: the
corpus mean of the contrastive text embeddings the VLM was trained on, Unicorn's μ_T, as a float64 sum and
its sample count). :meth:`EmbeddingVLM.from_pretrained` reads that folder back (safetensors only;
``trust_remote_code`` stays off unless asked for); a folder without ``text_mean.safetensors`` (older
exports, VLMs never trained on text embeddings) loads with ``text_mean_state = None``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.io import atomic_write, atomic_write_text, verify_checksums, write_checksums

#: Images per forward when a vision tower embeds a whole pool (:meth:`OpenCLIPVisionTower.set_reference_mean`,
#: Unicorn's unpaired image pool): inference on a frozen tower in eval mode, so it sets memory use only.
ENCODE_BATCH_SIZE = 256

IMAGE_TOKEN = "<image>"
CONFIG_NAME = "vlm_config.json"
TEXT_MEAN_NAME = "text_mean.safetensors"
TEXT_MEAN_FORMAT = "synthloop-text-mean-1"


@dataclass
class VLMConfig:
    """What the VLM adds around the LM (saved as ``vlm_config.json``)."""

    embed_dim: int
    num_visual_tokens: int = 1
    token_mode: str = "repeat"  # "repeat" (paper) | "split"
    image_token: str = IMAGE_TOKEN
    projector_hidden: int | None = None  # default: the LM width
    vision_tower: dict[str, Any] | None = field(default=None)  # {"type": "open_clip", "model_name": ...}

    def __post_init__(self) -> None:
        if self.token_mode not in ("repeat", "split"):
            raise ValueError(f"token_mode must be 'repeat' or 'split', got {self.token_mode!r}")
        if self.num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens must be >= 1, got {self.num_visual_tokens}")


class Projector(nn.Module):
    """Two-layer MLP with GELU: (B, D) -> (B, K, H)."""

    def __init__(self, embed_dim: int, width: int, num_tokens: int = 1, token_mode: str = "repeat",
                 hidden: int | None = None) -> None:
        super().__init__()
        self.num_tokens, self.token_mode, self.width = num_tokens, token_mode, width
        hidden = hidden or width
        out = width * (num_tokens if token_mode == "split" else 1)
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.net(emb)
        if self.token_mode == "split":
            return x.view(emb.shape[0], self.num_tokens, self.width)
        return x.unsqueeze(1).expand(-1, self.num_tokens, -1)


class OpenCLIPVisionTower(nn.Module):
    """An open_clip image tower as a pooled-embedding encoder, optionally normalised and centred.

    ``forward(images)`` = ``normalize(encode_image(images)) - image_mean`` (``image_mean`` is a
    buffer, zero until :meth:`set_reference_mean`). ``trainable=False`` freezes it (eval mode kept).
    """

    def __init__(self, model_name: str, pretrained: str | None = None, normalize: bool = True,
                 trainable: bool = False) -> None:
        super().__init__()
        from models.clip import create_clip

        bundle = create_clip(model_name, pretrained=pretrained)
        self.model_name, self.normalize, self.trainable = model_name, normalize, trainable
        self.visual = bundle.model.visual
        self.preprocess = bundle.preprocess_val
        self.embed_dim = int(bundle.model.text_projection.shape[1]) if hasattr(bundle.model, "text_projection") \
            else int(self.visual.output_dim)
        self.register_buffer("image_mean", torch.zeros(self.embed_dim))
        if not trainable:
            self.visual.requires_grad_(False)

    def spec(self) -> dict[str, Any]:
        return {"type": "open_clip", "model_name": self.model_name, "normalize": self.normalize,
                "trainable": self.trainable}

    def train(self, mode: bool = True) -> "OpenCLIPVisionTower":
        super().train(mode)
        if not self.trainable:
            self.visual.eval()
        return self

    @torch.no_grad()
    def set_reference_mean(self, images: torch.Tensor, batch_size: int = ENCODE_BATCH_SIZE) -> torch.Tensor:
        """Set ``image_mean`` to the mean normalised embedding of a reference image pool; return it."""
        self.image_mean.zero_()
        feats = torch.cat([self.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        self.image_mean.copy_(feats.mean(0))
        return self.image_mean.clone()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            feats = self.visual(images.to(self.image_mean.device)).float()
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images) - self.image_mean


def build_vision_tower(spec: dict[str, Any] | None) -> nn.Module | None:
    if spec is None:
        return None
    kind = spec.get("type")
    if kind != "open_clip":
        raise ValueError(f"unknown vision tower type {kind!r} (known: 'open_clip')")
    return OpenCLIPVisionTower(spec["model_name"], pretrained=spec.get("pretrained"),
                               normalize=spec.get("normalize", True), trainable=spec.get("trainable", False))


def ensure_image_token(tokenizer: Any, lm: nn.Module, image_token: str = IMAGE_TOKEN) -> int:
    """Add ``image_token`` as a special token when the tokenizer lacks it (resizing the LM); return its id."""
    ids = tokenizer.convert_tokens_to_ids([image_token])
    unk = getattr(tokenizer, "unk_token_id", None)
    if ids and ids[0] is not None and ids[0] != unk:
        return int(ids[0])
    tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    lm.resize_token_embeddings(len(tokenizer))
    return int(tokenizer.convert_tokens_to_ids(image_token))


class EmbeddingVLM(nn.Module):
    """Projector + causal LM (+ optional vision tower); see the module docstring."""

    def __init__(self, lm: nn.Module, tokenizer: Any, config: VLMConfig, vision_tower: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.lm, self.tokenizer, self.config = lm, tokenizer, config
        self.image_token_id = ensure_image_token(tokenizer, lm, config.image_token)
        width = int(lm.get_input_embeddings().weight.shape[1])
        self.projector = Projector(config.embed_dim, width, config.num_visual_tokens, config.token_mode,
                                   config.projector_hidden)
        self.vision_tower = vision_tower
        self.lora = False
        #: the training corpus' text mean (μ_T) as ``{"dim", "sum" (float64), "count", "info"}`` -- the
        #: ``state_dict`` format of ``datagen.unicorn.StreamingMean`` plus a JSON-able ``info`` dict
        #: (provenance); ``None`` when unknown. A plain attribute, not a buffer: no dtype cast touches it.
        self.text_mean_state: dict[str, Any] | None = None

    @property
    def text_mean(self) -> torch.Tensor | None:
        """μ_T (float32, ``(D,)``) from :attr:`text_mean_state`; ``None`` when unknown or over no samples."""
        st = self.text_mean_state
        if st is None or int(st["count"]) == 0:
            return None
        return (torch.as_tensor(st["sum"], dtype=torch.float64) / int(st["count"])).float()

    # ------------------------------------------------------------------ text side
    def expand_image_tokens(self, text: str) -> str:
        """Replace each ``<image>`` with K copies (what the model sees)."""
        k = self.config.num_visual_tokens
        return text.replace(self.config.image_token, self.config.image_token * k)

    def image_features(self, image_embeds: torch.Tensor | None = None, images: torch.Tensor | None = None
                       ) -> torch.Tensor:
        if image_embeds is None:
            if images is None:
                raise ValueError("give image_embeds or images")
            if self.vision_tower is None:
                raise ValueError("this VLM has no vision tower: pass image_embeds, or build it with one")
            image_embeds = self.vision_tower(images)
        dtype = self.projector.net[0].weight.dtype
        return self.projector(image_embeds.to(dtype))

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
                     images: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the K visual tokens spliced in at the ``<image>`` positions.

        Every row must hold exactly ``K`` image tokens (one image per sequence) when visual inputs are
        given, and none when they are not.
        """
        embeds = self.lm.get_input_embeddings()(input_ids)
        is_img = input_ids == self.image_token_id
        per_row = is_img.sum(1)
        k = self.config.num_visual_tokens
        if image_embeds is None and images is None:
            if per_row.any():
                raise ValueError("the prompt has <image> tokens but no image_embeds/images were given")
            return embeds
        if not bool((per_row == k).all()):
            raise ValueError(f"each sequence needs exactly {k} <image> token(s) (use expand_image_tokens); "
                             f"got {per_row.tolist()}")
        visual = self.image_features(image_embeds, images).to(embeds.dtype)  # (B, K, H)
        return embeds.masked_scatter(is_img.unsqueeze(-1), visual.reshape(-1, visual.shape[-1]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any):
        inputs_embeds = self.embed_inputs(input_ids, image_embeds, images)
        return self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 image_embeds: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> torch.Tensor:
        """New tokens only (B, T) -- HF ``generate`` from ``inputs_embeds`` with the KV cache.

        The prompt must be left-padded for batched generation.
        """
        inputs_embeds = self.embed_inputs(input_ids, image_embeds, images)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs)

    # ------------------------------------------------------------------ LoRA, freezing
    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target_modules: list[str] | str | None = None) -> None:
        """Wrap the LM with a peft LoRA adapter (the projector stays fully trainable)."""
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                         target_modules=target_modules or "all-linear")
        self.lm = get_peft_model(self.lm, cfg)
        self.lora = True

    def set_trainable(self, projector: bool = True, lm: bool = True) -> None:
        """Stage A: ``lm=False`` (projector only). Stage B: both. With LoRA, ``lm`` means the adapter."""
        self.projector.requires_grad_(projector)
        if self.lora:
            for name, p in self.lm.named_parameters():
                p.requires_grad_(lm and "lora_" in name)
        else:
            self.lm.requires_grad_(lm)
        if self.vision_tower is not None and not getattr(self.vision_tower, "trainable", False):
            self.vision_tower.requires_grad_(False)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """HF folder: LM (LoRA merged) + tokenizer + projector + vlm config (+ vision tower)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lm = self.lm
        if self.lora:
            import copy

            lm = copy.deepcopy(self.lm).merge_and_unload()
        lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        atomic_write(path / "projector.safetensors", lambda tmp: save_file(tensors, tmp))
        config = asdict(self.config)
        if self.vision_tower is not None and hasattr(self.vision_tower, "spec"):
            config["vision_tower"] = self.vision_tower.spec()
            vt = {k: v.detach().cpu().contiguous() for k, v in self.vision_tower.state_dict().items()}
            atomic_write(path / "vision_tower.safetensors", lambda tmp: save_file(vt, tmp))
        self._save_text_mean(path)
        atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2))
        # written last: its presence marks a complete folder, and from_pretrained verifies every file against it
        write_checksums(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,
                        trust_remote_code: bool = False) -> "EmbeddingVLM":
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not a synthloop VLM folder: {CONFIG_NAME} is missing")
        verify_checksums(path)
        config = VLMConfig(**json.loads(cfg_file.read_text()))
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        tower = build_vision_tower(config.vision_tower)
        model = cls(lm, tokenizer, config, vision_tower=tower)
        model.projector.load_state_dict(load_file(str(path / "projector.safetensors")))
        if tower is not None and (path / "vision_tower.safetensors").is_file():
            tower.load_state_dict(load_file(str(path / "vision_tower.safetensors")))
        model.text_mean_state = load_text_mean(path)
        return model

    def _save_text_mean(self, path: Path) -> None:
        from safetensors.torch import save_file

        target = path / TEXT_MEAN_NAME
        st = self.text_mean_state
        if st is None:
            target.unlink(missing_ok=True)  # no stale mean of an earlier save into the same folder
            return
        total = torch.as_tensor(st["sum"], dtype=torch.float64).detach().cpu().reshape(-1).contiguous()
        count = int(st["count"])
        if total.shape[0] != int(st["dim"]):
            raise ValueError(f"text_mean_state: sum has {total.shape[0]} values, dim is {st['dim']}")
        mean = (total / count).float() if count else torch.zeros(total.shape[0])
        tensors = {"sum": total, "mean": mean, "count": torch.tensor([count], dtype=torch.int64)}
        meta = {"format": TEXT_MEAN_FORMAT, "count": str(count), "info": json.dumps(st.get("info") or {})}
        atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_text_mean(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``text_mean_state`` saved in a VLM folder (``text_mean.safetensors``), or ``None`` without one."""
    from safetensors import safe_open

    file = Path(path) / TEXT_MEAN_NAME
    if not file.is_file():
        return None
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        total, count = f.get_tensor("sum").to(torch.float64), int(f.get_tensor("count").reshape(-1)[0])
    if meta.get("format") != TEXT_MEAN_FORMAT:
        raise ValueError(f"{file}: unknown text-mean format {meta.get('format')!r} (expected {TEXT_MEAN_FORMAT!r})")
    return {"dim": int(total.shape[0]), "sum": total, "count": count, "info": json.loads(meta.get("info") or "{}")}


def build_vlm(lm_path: str, embed_dim: int, *, num_visual_tokens: int = 1, token_mode: str = "repeat",
              projector_hidden: int | None = None, vision_tower: dict[str, Any] | None = None,
              torch_dtype: torch.dtype | None = None, trust_remote_code: bool = False) -> EmbeddingVLM:
    """A fresh projector on a pretrained HF causal LM loaded from ``lm_path`` (a local folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(lm_path).exists():
        raise FileNotFoundError(f"language model {lm_path!r} does not exist; give a local save_pretrained folder")
    tokenizer = AutoTokenizer.from_pretrained(lm_path, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = VLMConfig(embed_dim=embed_dim, num_visual_tokens=num_visual_tokens, token_mode=token_mode,
                       projector_hidden=projector_hidden, vision_tower=vision_tower)
    return EmbeddingVLM(lm, tokenizer, config, vision_tower=build_vision_tower(vision_tower))
