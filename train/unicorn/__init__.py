"""Unicorn: a VLM trained from text alone (spec: ``docs/specs/unicorn.md``).

* :mod:`.module` -- :class:`UnicornVLM`: stages text / align (A) / instruct (B) on synthetic image embeddings;
* :mod:`.vqa_eval` -- VQA evaluation of an embedding VLM from a JSONL file, and the world's VQA set;
* :mod:`.toy` -- ``synthloop unicorn-toy``: the toy recipe end to end on the scene world.
"""

from __future__ import annotations

from train import lazy_exports

_EXPORTS = {
    "UnicornVLM": ".module",
    "clip_gap_diagnostics": ".module",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
