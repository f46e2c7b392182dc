"""Vision-Zero: self-play "who is the spy" games and Iterative-SPO (spec: ``docs/specs/visionzero.md``).

* :mod:`.engine` -- plays batches of games with any batched text generator and scores them (:func:`score_game`);
* :mod:`.policy` -- generation + log-probs for the embedding VLM and for Hugging Face VLMs (Qwen2.5-VL);
* :mod:`.config` -- the typed YAML sections of the self-play module (generation, loss, rewards, phase);
* :mod:`.advantage` -- group normalisation and Role Advantage Estimation;
* :mod:`.phase` -- the Iterative-SPO phase controller;
* :mod:`.loss` -- the policy-gradient loss (k3 KL) and the named cross-rank metric sum;
* :mod:`.module` -- :class:`VisionZeroSelfPlay`: rollouts, advantages, the optimisation step, the phase switch;
* :mod:`.sft` -- :class:`VisionZeroSFT`: the toy recipe's supervised base policy;
* :mod:`.evaluate` -- ``synthloop visionzero-eval``: held-out games, tables against the base, phase plot;
* :mod:`.toy` -- ``synthloop visionzero-toy``: SFT -> self-play -> evaluation.
"""

from __future__ import annotations

from train import lazy_exports

_EXPORTS = {
    "VisionZeroSelfPlay": ".module",
    "GenerationConfig": ".config",
    "LossConfig": ".config",
    "PhaseConfig": ".config",
    "RewardConfig": ".config",
    "VisionZeroSFT": ".sft",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
