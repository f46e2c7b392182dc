"""GIFT synthetic replay: prompt pools, text-to-image backends and cached replay sets.

Typical use at the boundary before task t (see ``docs/specs/gift.md``)::

    pool = build_pool("imagenet", [(fam.classnames, fam.templates[0]) for fam in tasks[:t]])
    backend = DiffusersT2I("path/to/sd15", scheduler="pndm", steps=50)   # or WorldT2I(64) for toy runs
    set_dir = make_replay_set(pool, 1000, seed=42, backend=backend, out_dir=cache, rank=r, world_size=W)
    wait_complete(set_dir, timeout=...)                                   # after the caller's barrier
    data = ReplayDataset(set_dir, transform=clip_eval_transform)
"""

from .backends import (DiffusersT2I, TextToImage, WorldT2I, backend_from_config, is_black,
                       sd15_sized_random_pipeline, tiny_diffusers_pipeline)
from .prompts import (IMAGENET_TEMPLATE, PromptPool, build_pool, imagenet_classnames, pool_summary,
                      world_base_prompts, world_prompt_spec)
from .replay import (ReplayDataset, epoch_seed, is_complete, item_seed, make_replay_set, part_name,
                     replay_set_dir, replay_set_hash, wait_complete)
from .styled import StyledWorldT2I

__all__ = [
    "DiffusersT2I", "IMAGENET_TEMPLATE", "PromptPool", "ReplayDataset", "TextToImage", "WorldT2I",
    "backend_from_config", "build_pool", "epoch_seed", "imagenet_classnames", "is_black", "is_complete",
    "item_seed", "make_replay_set", "part_name", "pool_summary", "replay_set_dir", "replay_set_hash",
    "StyledWorldT2I", "sd15_sized_random_pipeline", "tiny_diffusers_pipeline", "wait_complete", "world_base_prompts", "world_prompt_spec",
]
