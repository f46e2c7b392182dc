"""Export of an :class:`models.vlm.EmbeddingVLM` (Unicorn's VLM) to a folder the Hugging Face Auto classes load.

    from models.hf_vlm import save_hf_vlm
    save_hf_vlm(vlm, "runs/unicorn/hf", reference_images=pool)      # or with the tower's image_mean already set

    # anywhere, without synthloop installed (transformers + open_clip):
    model = AutoModelForImageTextToText.from_pretrained("runs/unicorn/hf", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained("runs/unicorn/hf", trust_remote_code=True)

The folder holds ``config.json`` (``SynthloopVLMConfig``: the LM's config as ``text_config``, the tower's full
open_clip model config as ``vision_config``, the projector's shape, the image token and the centring rule),
``model.safetensors`` (LM, tower, its ``image_mean``, projector), the tokenizer with its chat template,
``processor_config.json`` + ``preprocessor_config.json`` (``CLIPImageProcessor`` with the tower's size,
mean and std), the three remote-code files of this package (standalone: they import no synthloop module)
and ``checksums.sha256``. LoRA adapters are merged first.

Test-time centring (Unicorn, ``docs/specs/unicorn.md``): real images are centred with the mean normalised
embedding of a reference image pool. The export bakes that mean in (``image_mean`` buffer,
``image_centering: "pool_mean"``, ``image_mean_count``): give ``reference_images`` (preprocessed, ``(N, 3, S, S)``)
or set it on the tower beforehand with ``set_reference_mean``. A VLM whose tower mean is still zero is refused
unless ``image_centering="none"`` is asked for explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from models.errors import UserError


def _image_processor(tower) -> Any:
    import open_clip
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    pre = open_clip.get_model_preprocess_cfg(tower)
    size = pre.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}.get(
        pre.get("interpolation", "bicubic"), PILImageResampling.BICUBIC)
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              resample=resample, image_mean=list(pre["mean"]), image_std=list(pre["std"]),
                              do_center_crop=True, do_convert_rgb=True)


def save_hf_vlm(vlm, folder: str | os.PathLike, *, reference_images: torch.Tensor | None = None,
                image_centering: str | None = None, image_mean_count: int | None = None) -> Path:
    """Write ``vlm`` (an EmbeddingVLM with an open_clip vision tower) as a Hugging Face folder; return it."""
    import copy

    from models.clip import open_clip_model_config
    from models.io import write_checksums

    from .configuration_synthloop_vlm import SynthloopVLMConfig
    from .modeling_synthloop_vlm import SynthloopVLMForConditionalGeneration
    from .processing_synthloop_vlm import SynthloopVLMProcessor

    tower = vlm.vision_tower
    if tower is None or not hasattr(tower, "model_name"):
        raise UserError("save_hf_vlm: the VLM has no open_clip vision tower; build it with vision_tower="
                        "{'type': 'open_clip', 'model_name': ...} (a text-only VLM cannot read images)")
    if reference_images is not None:
        tower.set_reference_mean(reference_images)
        image_mean_count = int(reference_images.shape[0])
    centred = bool(tower.image_mean.abs().sum() > 0)
    if image_centering is None:
        if not centred:
            raise UserError("save_hf_vlm: the tower's image_mean is zero: give reference_images (a pool of real "
                            "images, Unicorn's test-time centring) or image_centering='none' to export uncentred")
        image_centering = "pool_mean"
    if image_centering not in ("pool_mean", "none"):
        raise UserError(f"save_hf_vlm: image_centering must be 'pool_mean' or 'none', got {image_centering!r}")
    lm = copy.deepcopy(vlm.lm).merge_and_unload() if vlm.lora else vlm.lm
    text_config = copy.deepcopy(lm.config)
    config = SynthloopVLMConfig(
        text_config=text_config, vision_config=open_clip_model_config(tower, tower.model_name),
        embed_dim=int(tower.embed_dim), num_visual_tokens=vlm.config.num_visual_tokens,
        token_mode=vlm.config.token_mode, projector_hidden=vlm.config.projector_hidden,
        image_token=vlm.config.image_token, image_token_id=int(vlm.image_token_id), normalize=bool(tower.normalize),
        image_centering=image_centering, image_mean_count=int(image_mean_count or 0),
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)))
    hf = SynthloopVLMForConditionalGeneration(config).eval()
    hf.language_model.load_state_dict(lm.state_dict())
    hf.vision_tower.visual.load_state_dict(tower.visual.state_dict())
    hf.vision_tower.image_mean.copy_(tower.image_mean if image_centering == "pool_mean" else 0)
    hf.projector.load_state_dict(vlm.projector.state_dict())
    if getattr(lm, "generation_config", None) is not None:
        hf.generation_config = copy.deepcopy(lm.generation_config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    SynthloopVLMConfig.register_for_auto_class()
    SynthloopVLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    SynthloopVLMProcessor.register_for_auto_class()
    hf.save_pretrained(folder)
    processor = SynthloopVLMProcessor(_image_processor(tower), vlm.tokenizer,
                                      chat_template=getattr(vlm.tokenizer, "chat_template", None),
                                      image_token=vlm.config.image_token,
                                      num_visual_tokens=vlm.config.num_visual_tokens)
    processor.save_pretrained(folder)
    write_checksums(folder)
    return folder
