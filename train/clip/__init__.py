"""Contrastive CLIP pre-training on an online stream (the quickstart) and zero-shot evaluation.

* :mod:`.pretrain` -- :class:`CLIPPretrain`: open_clip ``ClipLoss`` over gathered features, zero-shot
  validation on held-out world task families, open_clip-format export;
* :mod:`.zeroshot` -- template-ensemble zero-shot accuracy on :class:`datagen.evalset.EvalSet` s.
"""

from __future__ import annotations

from train import lazy_exports

#: Images per batch of every zero-shot evaluation of a CLIP (``CLIPPretrain``'s validation, the continual
#: runner's evaluation after each task; ``eval_batch_size`` in their configs). Inference only: it sets
#: memory use, not what is measured. Defined here, without torch, so CLI signatures can use it.
DEFAULT_EVAL_BATCH_SIZE = 256

_EXPORTS = {
    "CLIPPretrain": ".pretrain",
    "CaptionTransform": ".pretrain",
    "build_world_eval_sets": ".zeroshot",
    "eval_loader": ".zeroshot",
    "format_accuracy_table": ".zeroshot",
    "zero_shot_accuracy": ".zeroshot",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
