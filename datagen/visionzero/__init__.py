"""Vision-Zero: self-play "Who is the spy?" games for VLM self-improvement (pure game logic).

Spec: ``docs/specs/visionzero.md`` (arXiv 2509.25541). Modules:

* :mod:`.rules` -- vote parsing, vote counts, zero-sum clue rewards, decision rewards, vote statistics,
  game outcomes and win rates;
* :mod:`.pairs` -- image-pair sources (scene world, folders of edited photos, bar charts);
* :mod:`.setups` -- :class:`GameSetup` and the stream generator :class:`GameSetups`;
* :mod:`.prompting` -- clue / decision prompts with the visibility rules enforced.

No model or Lightning code here: rollouts, advantages (group normalisation, Role Advantage
Estimation), the Iterative-SPO phase controller and the losses live on the training side
(:mod:`train.visionzero`).
"""

from .pairs import SPY_EDIT_KINDS, ChartPairs, FolderPairs, PairSource, WorldPairs
from .prompting import (Turn, load_prompts, render_clue_prompt, render_decision_prompt, render_observer_prompt,
                        visible_view)
from .rules import (NA, civilians_win, clue_rewards, decision_rewards, observer_decision_rewards, parse_vote,
                    vote_counts, vote_stats, win_rate)
from .setups import GameSetup, GameSetups

__all__ = [
    "NA", "SPY_EDIT_KINDS", "ChartPairs", "FolderPairs", "GameSetup", "GameSetups", "PairSource", "Turn",
    "WorldPairs", "civilians_win", "clue_rewards", "decision_rewards", "load_prompts", "observer_decision_rewards",
    "parse_vote", "render_clue_prompt", "render_decision_prompt", "render_observer_prompt", "visible_view",
    "vote_counts", "vote_stats", "win_rate",
]
