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
from .world_writer import (PROMPT_DIR, WorldWriter, instruction_items, scene_for_seed,
                           scene_from_dense_caption)

__all__ = [
    "Messages", "OpenAIHTTPBackend", "PROMPT_DIR", "PromptTemplate", "TextBackend", "TransformersBackend",
    "WorldWriter", "build_tiny_chat_model", "instruction_items", "load_prompt", "scene_for_seed",
    "scene_from_dense_caption",
]


def __getattr__(name: str):
    # needs torch: loaded on first use so that command help and the world writer stay torch-free
    if name == "TransformersBackend":
        from .transformers_backend import TransformersBackend

        return TransformersBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
