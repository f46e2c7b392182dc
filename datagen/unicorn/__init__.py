"""Unicorn (text-only VLM training) data synthesis: modality transfer and LLM-output parsing.

* :mod:`.transfer` -- stage 3: text embeddings -> synthetic image embeddings (``modality_transfer``),
  running means, modality-gap diagnostics, test-time centring of real image embeddings;
* :mod:`.parsing` -- stages 1-2: defensive parsing/validation of LLM captions and instruction JSON;
* :mod:`.stages` -- stages 1-2 as an online generator (``UnicornText``);
* :mod:`.export` -- the shard export engine behind ``synthloop datagen unicorn`` (resumable, drop counting,
  concurrent generation), with stage 3 at export time in :mod:`.stage3` (CLIP text embeddings).

Text generation backends (LLM, HTTP server, the scene world's own writer) live in ``datagen.text``.
"""

from .parsing import (Dedup, PayloadError, clean_caption, is_refusal, normalise_text, parse_instructions,
                      parse_json_payload, seed_objects, validate_caption)

_TRANSFER = ("MODES", "StreamingMean", "center_image_embeddings", "gap_diagnostics", "modality_transfer",
             "realign_scale", "realign_steps")


def __getattr__(name: str):
    # stage 3 needs torch; loaded on first use so that `synthloop datagen unicorn --help` stays fast
    if name in _TRANSFER:
        from . import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "MODES", "Dedup", "PayloadError", "StreamingMean", "center_image_embeddings", "clean_caption",
    "gap_diagnostics", "is_refusal", "modality_transfer", "normalise_text", "parse_instructions",
    "parse_json_payload", "realign_scale", "realign_steps", "seed_objects", "validate_caption",
]
