"""The training side of synthloop: shared machinery in :mod:`train.core`, one package per recipe.

* :mod:`train.core` -- the ``synthloop`` LightningCLI, the online DataModule, callbacks, strategies
  (DDP, DeepSpeed ZeRO-2/3, their CPU/gloo versions), pre-emption, resilience, optimizer/schedule;
* :mod:`train.clip` -- contrastive CLIP pre-training on an online stream, zero-shot evaluation;
* :mod:`train.gift` -- GIFT continual CLIP fine-tuning: losses, the per-task module, the MTIL runner;
* :mod:`train.unicorn` -- Unicorn text-only VLM training, VQA evaluation, the toy recipe;
* :mod:`train.visionzero` -- Vision-Zero self-play: engine, policies, Iterative-SPO, evaluation, toy.

``train`` imports ``datagen`` and ``models``; neither imports ``train`` (``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from its submodule (``exports[name]``) on first use.

    The recipe packages list their public classes this way, so ``import train.gift`` (and ``synthloop
    <command> --help``) stays free of torch and Lightning until a class is actually used, while configs
    still name classes by their short path (``train.gift.GIFTTask``).
    """
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import sys
        from importlib import import_module

        value = getattr(import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # cached: the next lookup is a plain attribute
        return value

    return __getattr__
