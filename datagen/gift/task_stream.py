"""The per-step sample of continual fine-tuning: one task image + one synthetic replay pair.

GIFT trains on ``B`` task images and ``B`` synthetic image-prompt pairs per step. Pairing them in one
generator keeps one deterministic, resumable stream (``datagen.stream``) for both: sample ``index``
draws its task image from the task source with the sample's rng, and takes replay item
``perm_p[index mod N]`` of pass ``p = index div N`` (a fresh permutation per pass), so the replay set is
cycled through exactly as the spec asks (about 64 passes per task in the reference runs), and a
resumed run picks up at the same replay item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datagen.generator import SampleGenerator


class ReplayCycle:
    """Index -> (set, item): one permutation of the N items per pass, seeded by (seed, pass).

    With several replay sets (``regenerate_each_epoch``), pass ``p`` uses set ``p mod len(sets)``.
    """

    def __init__(self, replays: list, seed: int) -> None:
        self.replays, self.seed = replays, int(seed)
        self.replay = replays[0]
        self._perm_pass: int | None = None
        self._perm: np.ndarray | None = None

    def item(self, index: int) -> tuple[int, int]:
        n = len(self.replay)  # passes are counted in the first set's size (sets differ only by drops)
        p = index // n
        if p != self._perm_pass:  # streams move forward, so one cached permutation suffices
            self._perm = np.random.default_rng([self.seed, p]).permutation(n)
            self._perm_pass = p
        which = p % len(self.replays)
        return which, int(self._perm[index % n]) % len(self.replays[which])


class ContinualStream(SampleGenerator):
    """``{"image", "label"}`` from the task source, plus ``{"replay_image", "prompt_id", "replay_txt"}``
    (and ``"replay_describes"``, a multi-hot over the pool, when the replay set records it).

    Args:
        task: a generator of labelled task samples (``{"image": PIL, "label": int, ...}``), e.g.
            ``datagen.world.TaskSamples`` or :class:`datagen.gift.folders.FolderTask`.
        replay: a map-style replay set (``datagen.gift.ReplayDataset`` without transform), a list of
            them (a fresh set per pass: ``regenerate_each_epoch``), or None.
        seed: seed of the replay passes' permutations.
    """

    def __init__(self, task: SampleGenerator, replay=None, seed: int = 0) -> None:
        self.task = task
        self.replay = replay
        replays = replay if isinstance(replay, (list, tuple)) else ([replay] if replay is not None else [])
        self.cycle = ReplayCycle(list(replays), seed) if replays and len(replays[0]) > 0 else None

    def generate(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        s = self.task.generate(rng, index)
        problem = self.task.validate(s) if hasattr(self.task, "validate") else None
        if problem is not None:  # raised here so the stream drops and counts it with the reason
            raise ValueError(f"task sample {index}: {problem}")
        out = {"image": s["image"], "label": int(s["label"]), "__key__": s.get("__key__", f"{index:010d}")}
        if self.cycle is not None:
            which, k = self.cycle.item(index)
            item = self.cycle.replays[which][k]
            out.update(replay_image=item["image"], prompt_id=int(item["prompt_id"]), replay_txt=item["txt"])
            if "describes" in item:
                out["replay_describes"] = item["describes"]
        return out


class ContinualTransform:
    """PIL -> tensors with the CLIP transform (both branches: the world needs no augmentation, and the
    spec gives synthetic images the evaluation transform)."""

    def __init__(self, preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = {"image": self.preprocess(sample["image"]), "label": sample["label"]}
        if "replay_image" in sample:
            out.update(replay_image=self.preprocess(sample["replay_image"]), prompt_id=sample["prompt_id"],
                       replay_txt=sample["replay_txt"])
            if "replay_describes" in sample:
                out["replay_describes"] = sample["replay_describes"]
        return out
