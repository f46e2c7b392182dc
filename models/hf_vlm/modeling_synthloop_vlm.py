"""The synthloop embedding VLM as a Hugging Face model (remote code: copied into every export).

    image --open_clip tower--> pooled embedding --L2 normalise, - image_mean--> (B, D)
          --projector (Linear, GELU, Linear)--> K tokens spliced in at the <image> positions --> causal LM

Loads with ``AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)``; ``generate``
takes ``input_ids``, ``attention_mask`` and ``pixel_values`` (from the folder's ``AutoProcessor``). Standalone:
it imports ``torch``, ``transformers`` and ``open_clip`` only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_synthloop_vlm import SynthloopVLMConfig


def _open_clip_visual(model_cfg: dict) -> nn.Module:
    """The image tower of an open_clip model config, built without its text tower."""
    from open_clip.model import _build_vision_tower, get_cast_dtype

    cfg = dict(model_cfg)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False),
                               cast_dtype=get_cast_dtype("fp32"))


class SynthloopVisionTower(nn.Module):
    def __init__(self, config: SynthloopVLMConfig) -> None:
        super().__init__()
        self.visual = _open_clip_visual(config.vision_config)
        self.normalize = config.normalize
        self.centred = config.image_centering == "pool_mean"
        self.register_buffer("image_mean", torch.zeros(config.embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.visual(pixel_values.to(self.image_mean.device)).float()
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        return feats - self.image_mean if self.centred else feats


class SynthloopProjector(nn.Module):
    def __init__(self, config: SynthloopVLMConfig, width: int) -> None:
        super().__init__()
        self.num_tokens, self.token_mode, self.width = config.num_visual_tokens, config.token_mode, width
        hidden = config.projector_hidden or width
        out = width * (self.num_tokens if self.token_mode == "split" else 1)
        self.net = nn.Sequential(nn.Linear(config.embed_dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.net(emb)
        if self.token_mode == "split":
            return x.view(emb.shape[0], self.num_tokens, self.width)
        return x.unsqueeze(1).expand(-1, self.num_tokens, -1)


class SynthloopVLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = SynthloopVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_cache_class = True
    _no_split_modules = ["SynthloopVisionTower"]

    def __init__(self, config: SynthloopVLMConfig) -> None:
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        width = int(self.language_model.get_input_embeddings().weight.shape[1])
        self.vision_tower = SynthloopVisionTower(config)
        self.projector = SynthloopProjector(config, width)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.vision_tower(pixel_values)
        return self.projector(emb.to(self.projector.net[0].weight.dtype))

    def _inputs_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)
        is_img = input_ids == self.config.image_token_id
        if pixel_values is None:
            return embeds
        per_row = is_img.sum(1)
        if not bool((per_row == self.config.num_visual_tokens).all()):
            raise ValueError(f"each sequence needs exactly {self.config.num_visual_tokens} image token(s) (the "
                             f"processor expands {self.config.image_token!r}); got {per_row.tolist()}")
        visual = self.image_features(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(is_img.unsqueeze(-1), visual.reshape(-1, visual.shape[-1]))

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self._inputs_embeds(input_ids, pixel_values)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   **kwargs)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, **kwargs):
        inputs = self.language_model.prepare_inputs_for_generation(input_ids, **kwargs)
        # the image is read once, with the prompt; later steps feed only the new token from the cache
        first = inputs.get("input_ids") is not None and inputs["input_ids"].shape[1] == input_ids.shape[1]
        inputs["pixel_values"] = pixel_values if first else None
        return inputs
