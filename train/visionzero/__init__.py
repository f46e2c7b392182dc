"""Vision-Zero: self-play "who is the spy" games and Iterative-SPO (spec: ``docs/specs/visionzero.md``).

* :mod:`.engine` -- plays batches of games with any batched text generator;
* :mod:`.policy` -- generation + log-probs for the embedding VLM and for Hugging Face VLMs (Qwen2.5-VL);
* :mod:`.module` -- :class:`VisionZeroSelfPlay`: rollouts, rewards, RAE / group advantages, the phase switch;
* :mod:`.sft` -- :class:`VisionZeroSFT`: the toy recipe's supervised base policy;
* :mod:`.evaluate` -- ``synthloop visionzero-eval``: held-out games, tables against the base, phase plot;
* :mod:`.toy` -- ``synthloop visionzero-toy``: SFT -> self-play -> evaluation.
"""

from .module import VisionZeroSelfPlay
from .sft import VisionZeroSFT

__all__ = ["VisionZeroSFT", "VisionZeroSelfPlay"]
