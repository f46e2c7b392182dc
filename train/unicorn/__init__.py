"""Unicorn: a VLM trained from text alone (spec: ``docs/specs/unicorn.md``).

* :mod:`.module` -- :class:`UnicornVLM`: stages text / align (A) / instruct (B) on synthetic image embeddings;
* :mod:`.vqa_eval` -- VQA evaluation of an embedding VLM from a JSONL file, and the world's VQA set;
* :mod:`.toy` -- ``synthloop unicorn-toy``: the toy recipe end to end on the scene world.
"""

from __future__ import annotations

_EXPORTS = {
    "UnicornVLM": ".module",
    "clip_gap_diagnostics": ".module",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing the package (e.g. for ``synthloop <cmd> --help``) does not import torch or Lightning.
    if name in _EXPORTS:
        from importlib import import_module

        value = globals()[name] = getattr(import_module(_EXPORTS[name], __name__), name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
