"""Contrastive CLIP pre-training on an online stream (the quickstart) and zero-shot evaluation.

* :mod:`.pretrain` -- :class:`CLIPPretrain`: open_clip ``ClipLoss`` over gathered features, zero-shot
  validation on held-out world task families, open_clip-format export;
* :mod:`.zeroshot` -- template-ensemble zero-shot accuracy on :class:`datagen.evalset.EvalSet` s.
"""

from .pretrain import CaptionTransform, CLIPPretrain
from .zeroshot import build_world_eval_sets, eval_loader, format_accuracy_table, zero_shot_accuracy

__all__ = ["CLIPPretrain", "CaptionTransform", "build_world_eval_sets", "eval_loader", "format_accuracy_table",
           "zero_shot_accuracy"]
