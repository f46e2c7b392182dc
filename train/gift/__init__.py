"""GIFT: continual CLIP fine-tuning with synthetic replay (spec: ``docs/specs/gift.md``).

* :mod:`.losses` -- pure tensor math: contrastive distillation, image-text alignment, AWC, L2, LwF, EWC;
* :mod:`.module` -- :class:`GIFTTask`: one task of the sequence (GIFT and the baselines sharing its loop);
* :mod:`.metrics` -- the MTIL accuracy matrix and Transfer / Avg / Last / BWT;
* :mod:`.runner` -- ``synthloop continual``: the task sequence end to end, resumable.
"""

from .metrics import AccuracyMatrix, cl_metrics, format_matrix_table
from .module import GIFTTask, method_parts, uses_replay

__all__ = ["AccuracyMatrix", "GIFTTask", "cl_metrics", "format_matrix_table", "method_parts", "uses_replay"]
