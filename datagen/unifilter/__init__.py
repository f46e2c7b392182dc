"""UniFilter (a learned image-text quality scorer) training data from the scene world (``docs/unifilter.md``).

* :mod:`.levels` -- captions at quality levels 0..3, exact by construction: the true caption (3), one attribute
  of one object wrong (2), several attributes or the object count wrong (1), an unrelated scene's caption (0);
* :mod:`.generators` -- online generators: :class:`LevelCaptions` (image-caption pairs) and
  :class:`InterleavedDocs` (image, text, image, text ... documents with one corrupted segment), balanced
  levels, scenes from the split's seed space (held-out val/test scenes never appear in training);
* :mod:`.written` -- :class:`WrittenLevels`: for real corpora (images with captions), a text backend (local
  model or OpenAI-compatible server) writes each caption's level-0..3 versions; bad outputs rejected and counted.
"""

from .generators import InterleavedDocs, LevelCaptions
from .written import LEVEL_INSTRUCTIONS, WrittenLevels
from .levels import (LEVEL_NAMES, LEVELS, TEXT_MODES, caption_at_level, describe, one_attribute_error,
                     several_errors, slot_differences, unrelated_scene)

__all__ = ["InterleavedDocs", "LEVELS", "LEVEL_INSTRUCTIONS", "LEVEL_NAMES", "LevelCaptions", "WrittenLevels", "TEXT_MODES", "caption_at_level",
           "describe", "one_attribute_error", "several_errors", "slot_differences", "unrelated_scene"]
