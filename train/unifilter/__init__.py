"""UniFilter: a learned image-text quality scorer trained on the scene world (spec: ``docs/specs/unifilter.md``).

* :mod:`.module` -- :class:`UniFilterTrainer`: MSE regression of :class:`models.unifilter.UniFilterScorer` to
  the quality level 0..3 on :mod:`datagen.unifilter` samples, held-out validation, ``save_pretrained`` export;
* :mod:`.metrics` -- rounded-score accuracy, confusion matrix, Spearman correlation (pure functions);
* :mod:`.online` -- :class:`ScoreFilter`: the scorer as an online filter stage of any recipe's stream;
* :mod:`.shards` -- ``synthloop score`` / ``synthloop filter`` over WebDataset shards.
"""

from __future__ import annotations

from train import lazy_exports

_EXPORTS = {
    "UniFilterTrainer": ".module",
    "ScorerTransform": ".module",
    "score_metrics": ".metrics",
    "ScoreFilter": ".online",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
