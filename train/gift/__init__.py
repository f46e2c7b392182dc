"""GIFT: continual CLIP fine-tuning with synthetic replay (spec: ``docs/specs/gift.md``).

* :mod:`.losses` -- pure tensor math: contrastive distillation, image-text alignment, AWC, L2, LwF, EWC;
* :mod:`.module` -- :class:`GIFTTask`: one task of the sequence (GIFT and the baselines sharing its loop);
* :mod:`.metrics` -- the MTIL accuracy matrix and Transfer / Avg / Last / BWT;
* :mod:`.runner` -- ``synthloop continual``: the task sequence end to end, resumable.
"""

from __future__ import annotations

from train import lazy_exports

_EXPORTS = {
    "AccuracyMatrix": ".metrics",
    "cl_metrics": ".metrics",
    "format_matrix_table": ".metrics",
    "GIFTTask": ".module",
    "method_parts": ".module",
    "uses_replay": ".module",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
