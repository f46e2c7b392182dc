"""The UniFilter quality scorer: a small VLM whose LM head is a linear score head (``docs/specs/unifilter.md``).

::

    images (N, 3, S, S) --open_clip vision tower--> patch tokens (N, C, g0, g0) --average pool--> (N, g*g, C)
        --2-layer MLP projector (Linear, GELU, Linear)--> (N, g*g, H)
    text "<image> caption" (or "<image> t1 <image> t2 ...") --each <image> -> g*g tokens--> ids
    token embeddings at the <image> positions <- the visual tokens (images in batch order, then text order)
    --causal LM backbone (HF AutoModel, no LM head)--> hidden (B, T, H) --hidden at the last non-pad token-->
    Linear(H, 1) --> score (B,), trained by MSE regression to the quality level 0..3

The paper's scorer: SigLIP-SO400M average-pooled to 144 tokens per image (``visual_grid=12``), a 0.5-1.5 B
Qwen2.5 LM (:func:`real_scale_config`). The toy: a tiny open_clip ViT of ``models/model_configs`` and a
tiny random Llama with the world's word-level tokenizer (:func:`tiny_scorer`), built in memory in a second.

Real weights are loaded only from local paths (``lm_path`` a ``save_pretrained`` folder, ``vision_pretrained``
an open_clip checkpoint file); nothing is downloaded. :meth:`UniFilterScorer.save_pretrained` writes one
self-contained folder (``scorer_config.json``, ``lm/`` = backbone + tokenizer, ``vision_tower.safetensors``,
``projector.safetensors``, ``score_head.safetensors``, ``checksums.sha256``) that
:meth:`UniFilterScorer.from_pretrained` reads back without the original checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import UserError
from models.io import atomic_write, atomic_write_text, verify_checksums, write_checksums
from models.vlm import IMAGE_TOKEN, ensure_image_token

CONFIG_NAME = "scorer_config.json"
#: The paper's visual tokens per image: SigLIP-SO400M's patch grid average-pooled to 12 x 12 = 144.
PAPER_VISUAL_GRID = 12
MAX_SCORE = 3.0  # quality levels 0..3


@dataclass
class ScorerConfig:
    """What the scorer is made of (saved as ``scorer_config.json``).

    Fields:
        vision_model: open_clip model name (a synthloop tiny one or e.g. ``ViT-SO400M-14-SigLIP-384``).
        vision_pretrained: local open_clip checkpoint of the tower (provenance once saved; the saved folder
            holds the tower's weights). None = random initialisation (toys, tests).
        visual_grid: the patch grid is average-pooled to ``visual_grid`` x ``visual_grid`` tokens per image.
        projector_hidden: hidden width of the 2-layer MLP projector (default: the LM width).
        train_vision: whether the vision tower trains (a random toy tower must; a pretrained one may stay frozen).
        image_token: the text placeholder of one image (expanded to ``visual_grid**2`` tokens).
        max_length: longest token sequence accepted (longer texts are an error, never silently cut: a cut
            could drop image tokens).
        tiny_lm: when the LM is built in memory (:func:`tiny_scorer`): ``{"hidden", "layers", "heads"}``.
    """

    vision_model: str
    vision_pretrained: str | None = None
    visual_grid: int = PAPER_VISUAL_GRID
    projector_hidden: int | None = None
    train_vision: bool = True
    image_token: str = IMAGE_TOKEN
    max_length: int = 2048
    tiny_lm: dict[str, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.visual_grid, bool) or not isinstance(self.visual_grid, int) or self.visual_grid < 1:
            raise UserError(f"ScorerConfig.visual_grid: must be an integer >= 1, got {self.visual_grid!r}")

    @property
    def tokens_per_image(self) -> int:
        return self.visual_grid * self.visual_grid


class PatchTokenTower(nn.Module):
    """An open_clip image tower as a patch-token encoder: the last block's normalised patch tokens (NCHW),
    average-pooled to ``grid`` x ``grid`` and flattened to ``(N, grid*grid, C)``.

    Works for open_clip's own ViTs and its timm towers (SigLIP), both of which have ``forward_intermediates``.
    """

    def __init__(self, model_name: str, grid: int, pretrained: str | None = None, trainable: bool = True) -> None:
        super().__init__()
        from models.clip import create_clip

        bundle = create_clip(model_name, pretrained=pretrained)
        self.visual, self.preprocess, self.image_size = bundle.model.visual, bundle.preprocess_val, bundle.image_size
        if not hasattr(self.visual, "forward_intermediates"):
            raise UserError(f"ScorerConfig.vision_model: {model_name!r} has no patch tokens (open_clip's "
                            "forward_intermediates); use a ViT tower")
        self.grid, self.trainable = int(grid), bool(trainable)
        with torch.no_grad():
            probe = self._patch_map(torch.zeros(1, 3, self.image_size, self.image_size))
        self.width, patches = int(probe.shape[1]), int(probe.shape[-1])
        if self.grid > patches:
            raise UserError(f"ScorerConfig.visual_grid: {self.grid} is more than {model_name}'s {patches} x "
                            f"{patches} patch grid; give at most {patches}")
        if not trainable:
            self.visual.requires_grad_(False)
        else:  # parameters after the last block (ViT `proj`, SigLIP's head, ...) never reach the patch tokens:
            # frozen, so that DDP finds no unused parameter and an optimizer keeps no state for them
            params = [(n, p) for n, p in self.visual.named_parameters() if p.requires_grad]
            with torch.enable_grad():
                out = self._patch_map(torch.zeros(1, 3, self.image_size, self.image_size))
                grads = torch.autograd.grad(out.float().sum(), [p for _, p in params], allow_unused=True)
            self.unused = [n for (n, p), g in zip(params, grads) if g is None]
            for (n, p), g in zip(params, grads):
                if g is None:
                    p.requires_grad_(False)

    def _patch_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(images, indices=1, normalize_intermediates=True,
                                                intermediates_only=True, output_fmt="NCHW")
        return out["image_intermediates"][-1]

    def train(self, mode: bool = True) -> "PatchTokenTower":
        super().train(mode)
        if not self.trainable:
            self.visual.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            fmap = self._patch_map(images)
        pooled = nn.functional.adaptive_avg_pool2d(fmap.float(), self.grid)  # (N, C, g, g)
        return pooled.flatten(2).transpose(1, 2)  # (N, g*g, C), row-major over the grid


class UniFilterScorer(nn.Module):
    """Vision tower -> pooled visual tokens -> MLP projector -> causal LM backbone -> score head (module docstring).

    ``backbone`` is a Hugging Face decoder without LM head (``AutoModel``); ``tokenizer`` its tokenizer.
    """

    def __init__(self, config: ScorerConfig, backbone: nn.Module, tokenizer: Any,
                 tower: PatchTokenTower | None = None) -> None:
        super().__init__()
        self.config, self.backbone, self.tokenizer = config, backbone, tokenizer
        self.tower = tower if tower is not None else PatchTokenTower(
            config.vision_model, config.visual_grid, config.vision_pretrained, config.train_vision)
        self.image_token_id = ensure_image_token(tokenizer, backbone, config.image_token)
        width = int(backbone.get_input_embeddings().weight.shape[1])
        hidden = config.projector_hidden or width
        self.projector = nn.Sequential(nn.Linear(self.tower.width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.score_head = nn.Linear(width, 1)
        # start near the middle of the score range: MSE's first steps then fit the spread, not the mean
        nn.init.normal_(self.score_head.weight, std=0.02)
        nn.init.constant_(self.score_head.bias, MAX_SCORE / 2)

    # ------------------------------------------------------------------ inputs
    @property
    def preprocess(self):
        """PIL image -> tensor, the tower's own transform (resize, crop, normalise)."""
        return self.tower.preprocess

    def expand_image_tokens(self, text: str) -> str:
        """Each ``<image>`` placeholder -> ``visual_grid**2`` image tokens (what the model reads)."""
        return text.replace(self.config.image_token, self.config.image_token * self.config.tokens_per_image)

    def encode_texts(self, texts: list[str], device: torch.device | str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of texts holding ``<image>`` placeholders, padded to the longest."""
        enc = self.tokenizer([self.expand_image_tokens(t) for t in texts], padding=True, return_tensors="pt",
                             add_special_tokens=False)
        if enc["input_ids"].shape[1] > self.config.max_length:
            raise UserError(f"UniFilterScorer: a text is {enc['input_ids'].shape[1]} tokens, more than max_length "
                            f"{self.config.max_length}; shorten the texts or raise ScorerConfig.max_length")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def embed_inputs(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the visual tokens spliced in at the image-token positions: image ``j`` of
        ``images`` (all images of row 0 in text order, then row 1, ...) fills the ``j``-th run of image tokens."""
        embeds = self.backbone.get_input_embeddings()(input_ids)
        is_img = input_ids == self.image_token_id
        n_tokens = int(is_img.sum())
        n_images = 0 if images is None else int(images.shape[0])
        if n_tokens != n_images * self.config.tokens_per_image:
            raise ValueError(f"UniFilterScorer: the texts hold {n_tokens} image tokens, {n_images} image(s) need "
                             f"{n_images * self.config.tokens_per_image} (one <image> placeholder per image)")
        if n_images:
            visual = self.projector(self.tower(images.to(embeds.device)).to(self.projector[0].weight.dtype))
            embeds = embeds.masked_scatter(is_img.unsqueeze(-1), visual.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return embeds

    # ------------------------------------------------------------------ scoring
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                images: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B,)`` (unbounded regression outputs; :meth:`levels` rounds them to 0..3)."""
        embeds = self.embed_inputs(input_ids, images)
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(1)  # the last non-pad token, left or right padding
        return self.score_head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()).squeeze(-1)

    def score(self, texts: list[str], images: torch.Tensor | None) -> torch.Tensor:
        """Scores of texts with ``<image>`` placeholders and their preprocessed images."""
        device = self.score_head.weight.device
        ids, mask = self.encode_texts(texts, device)
        return self(ids, mask, images)

    @staticmethod
    def levels(scores: torch.Tensor) -> torch.Tensor:
        """Scores rounded to the nearest level in 0..3."""
        return scores.detach().round().clamp(0, MAX_SCORE).long()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the scorer to the folder ``path`` (module docstring); return it."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / "lm")
        self.tokenizer.save_pretrained(path / "lm")
        for name, module in (("vision_tower", self.tower), ("projector", self.projector),
                             ("score_head", self.score_head)):
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            atomic_write(path / f"{name}.safetensors", lambda tmp, s=state: save_file(s, tmp))
        atomic_write_text(path / CONFIG_NAME, json.dumps(asdict(self.config), indent=2, sort_keys=True))
        write_checksums(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> "UniFilterScorer":
        """Read a folder written by :meth:`save_pretrained` (checksums verified; safetensors only)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise UserError(f"{path}: not a UniFilter scorer folder (no {CONFIG_NAME}); give a save_pretrained output")
        verify_checksums(path)
        config = ScorerConfig(**json.loads((path / CONFIG_NAME).read_text()))
        tokenizer = AutoTokenizer.from_pretrained(path / "lm", local_files_only=True)
        backbone = AutoModel.from_pretrained(path / "lm", dtype=dtype, local_files_only=True)
        tower = PatchTokenTower(config.vision_model, config.visual_grid, None, config.train_vision)
        tower.load_state_dict(load_file(str(path / "vision_tower.safetensors")))
        model = cls(config, backbone, tokenizer, tower)
        model.projector.load_state_dict(load_file(str(path / "projector.safetensors")))
        model.score_head.load_state_dict(load_file(str(path / "score_head.safetensors")))
        return model


# ---------------------------------------------------------------------- builders
def tiny_backbone(texts: Iterable[str], hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0):
    """A random ``LlamaModel`` (the decoder of :func:`models.tiny_lm.build_tiny_lm`, no LM head) and the world
    word-level tokenizer of ``texts``, in memory: ``(backbone, tokenizer)``."""
    from transformers import LlamaConfig, LlamaModel

    from models.tiny_lm import build_word_tokenizer

    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=len(tokenizer),
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaModel(config), tokenizer


def tiny_scorer(texts: Iterable[str], *, vision_model: str = "synthloop-tiny-vit32", visual_grid: int = 4,
                vision_pretrained: str | None = None, train_vision: bool = True, hidden: int = 128,
                layers: int = 2, heads: int = 4, seed: int = 0) -> UniFilterScorer:
    """The toy scorer: a tiny open_clip tower (``vision_model``; default a random ViT, 8 x 8 patches at 32 px
    pooled to 4 x 4; or a local checkpoint ``vision_pretrained``, e.g. the quickstart's world CLIP) and a random
    tiny Llama over the world's words (``texts``, e.g. :func:`datagen.text.corpus.world_corpus`)."""
    if vision_pretrained is not None and not Path(vision_pretrained).is_file():
        raise UserError(f"vision_pretrained: {vision_pretrained!r} does not exist; give a local open_clip "
                        "checkpoint file (nothing is downloaded)")
    backbone, tokenizer = tiny_backbone(texts, hidden, layers, heads, seed)
    config = ScorerConfig(vision_model=vision_model, vision_pretrained=vision_pretrained, visual_grid=visual_grid,
                          train_vision=train_vision, tiny_lm={"hidden": hidden, "layers": layers, "heads": heads})
    torch.manual_seed(seed + 1)
    return UniFilterScorer(config, backbone, tokenizer)


def real_scale_config(vision_pretrained: str, **overrides: Any) -> ScorerConfig:
    """The paper's scorer config: SigLIP-SO400M (open_clip ``ViT-SO400M-14-SigLIP-384``, 27 x 27 patches)
    average-pooled to 12 x 12 = 144 tokens, from a local open_clip checkpoint file. Pair it with a local
    Qwen2.5-0.5B folder in :func:`build_scorer`."""
    return ScorerConfig(**{"vision_model": "ViT-SO400M-14-SigLIP-384", "vision_pretrained": vision_pretrained,
                           "visual_grid": PAPER_VISUAL_GRID, "train_vision": True, **overrides})


def build_scorer(config: ScorerConfig, lm_path: str | os.PathLike, dtype: torch.dtype | None = None
                 ) -> UniFilterScorer:
    """A fresh projector and score head on a pretrained vision tower and LM, both from local paths.

    ``lm_path``: a local ``save_pretrained`` folder of a causal LM (e.g. Qwen2.5-0.5B); its decoder is loaded
    without the LM head (``AutoModel``). ``config.vision_pretrained``: a local open_clip checkpoint file.
    """
    from transformers import AutoModel, AutoTokenizer

    if not Path(lm_path).is_dir():
        raise UserError(f"lm_path: {os.fspath(lm_path)!r} is not a folder; give a local save_pretrained folder of a "
                        "causal LM (nothing is downloaded)")
    if config.vision_pretrained is not None and not Path(config.vision_pretrained).is_file():
        raise UserError(f"vision_pretrained: {config.vision_pretrained!r} does not exist; give a local open_clip "
                        "checkpoint file (nothing is downloaded)")
    tokenizer = AutoTokenizer.from_pretrained(lm_path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    backbone = AutoModel.from_pretrained(lm_path, dtype=dtype, local_files_only=True)
    return UniFilterScorer(config, backbone, tokenizer)
