"""What every sample generator is: the base class and the per-sample random generator (numpy only).

Kept apart from :mod:`datagen.stream` (which needs torch for ``IterableDataset``) so that a command's
``--help`` can name generator classes without importing torch. ``datagen.stream`` re-exports both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Sample = dict[str, Any]


class SampleGenerator:
    """Base class of sample generators (what the online stream needs from one).

    ``generate`` must be a pure function of ``(rng, index)``: same inputs, same sample. It may raise
    or return a sample that ``validate`` rejects; the stream drops such samples and counts them.
    Subclassing is what lets configs name a generator by ``class_path``; the stream itself only
    calls ``generate`` and ``validate``, so any object with those methods works from Python.
    """

    def generate(self, rng: np.random.Generator, index: int) -> Sample:
        raise NotImplementedError

    def validate(self, sample: Sample) -> str | None:
        """Reason to reject ``sample``, or None when it is fine."""
        return None


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of global sample ``index`` under ``seed`` (independent streams via SeedSequence)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
