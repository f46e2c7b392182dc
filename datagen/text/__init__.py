"""Text generation backends behind one interface (:class:`TextBackend`), and prompt templates.

* :class:`TransformersBackend` -- a local Hugging Face chat LM (batched, left-padded ``generate``);
* :class:`OpenAIHTTPBackend` -- any OpenAI-compatible server (vLLM, SGLang, ``transformers serve``);
* :class:`WorldWriter` -- the scene world's exact writer, the offline default for toy runs;
* :func:`load_prompt` -- ``configs/unicorn/prompts/*.yaml`` -> :class:`PromptTemplate`;
* :func:`build_tiny_chat_model` -- a tiny random chat LM on disk for tests.

Backends other than the world writer import their heavy dependencies lazily.
"""

from .base import Messages, PromptTemplate, TextBackend, load_prompt
from .http_backend import OpenAIHTTPBackend
from .tiny import build_tiny_chat_model
from .transformers_backend import TransformersBackend
from .world_writer import (PROMPT_DIR, WorldWriter, instruction_items, scene_for_seed,
                           scene_from_dense_caption)

__all__ = [
    "Messages", "OpenAIHTTPBackend", "PROMPT_DIR", "PromptTemplate", "TextBackend", "TransformersBackend",
    "WorldWriter", "build_tiny_chat_model", "instruction_items", "load_prompt", "scene_for_seed",
    "scene_from_dense_caption",
]
