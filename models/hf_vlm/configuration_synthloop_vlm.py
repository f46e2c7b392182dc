"""Configuration of the synthloop embedding VLM in Hugging Face form (remote code: copied into every export).

Standalone on purpose: an exported folder loads with ``transformers`` and ``open_clip`` only
(``AutoConfig.from_pretrained(folder, trust_remote_code=True)``); nothing here imports synthloop.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class SynthloopVLMConfig(PreTrainedConfig):
    """An open_clip image tower (pooled, L2-normalised, centred) -> 2-layer MLP projector -> K tokens -> a causal LM.

    ``vision_config`` is open_clip's model config of the tower's CLIP (``embed_dim``, ``vision_cfg``, ...: the
    ``model_cfg`` of an ``open_clip_config.json``). ``image_centering``: ``"pool_mean"`` means the tower subtracts
    ``image_mean`` (a buffer saved with the weights: the mean normalised embedding of a reference image pool,
    Unicorn's test-time centring), ``"none"`` that it does not. ``image_mean_count`` is the pool size (0: no pool).
    """

    model_type = "synthloop_vlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | None = None
    embed_dim: int = 512
    num_visual_tokens: int = 1
    token_mode: str = "repeat"
    projector_hidden: int | None = None
    image_token: str = "<image>"
    image_token_id: int = 0
    normalize: bool = True
    image_centering: str = "pool_mean"
    image_mean_count: int = 0
    tie_word_embeddings: bool = False
