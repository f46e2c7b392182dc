"""The continual stream: task samples paired with replay items cycled pass by pass."""

from __future__ import annotations

import numpy as np

from datagen.gift.task_stream import ContinualStream, ReplayCycle
from datagen.stream import GeneratorStream, take
from datagen.world import TaskSamples


class _Set:
    """A stand-in replay set (map-style, like ReplayDataset): items are dicts."""

    def __init__(self, tag: str, n: int) -> None:
        self.items = [{"image": None, "prompt_id": i, "txt": f"{tag}-{i}"} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        return self.items[k]


def _set(tag: str, n: int) -> _Set:
    return _Set(tag, n)


def test_each_pass_is_a_permutation_of_the_set():
    cycle = ReplayCycle([_set("a", 7)], seed=5)
    for p in range(3):
        items = [cycle.item(p * 7 + k)[1] for k in range(7)]
        assert sorted(items) == list(range(7))
    assert [cycle.item(k)[1] for k in range(7)] != [cycle.item(7 + k)[1] for k in range(7)]


def test_regenerated_sets_are_used_one_per_pass():
    cycle = ReplayCycle([_set("a", 4), _set("b", 4)], seed=0)
    assert {cycle.item(k)[0] for k in range(4)} == {0}
    assert {cycle.item(k)[0] for k in range(4, 8)} == {1}
    assert {cycle.item(k)[0] for k in range(8, 12)} == {0}


def test_stream_pairs_task_images_with_replay_items_deterministically():
    gen = ContinualStream(TaskSamples("shape", image_size=32), _set("a", 5), seed=1)
    a = take(GeneratorStream(gen, seed=2), 10)
    b = take(GeneratorStream(gen, seed=2), 10)
    assert [s["replay_txt"] for s in a] == [s["replay_txt"] for s in b]
    assert [np.asarray(s["image"]).tobytes() for s in a] == [np.asarray(s["image"]).tobytes() for s in b]
    assert all(0 <= s["label"] < 3 for s in a)
    assert sorted(s["prompt_id"] for s in a[:5]) == list(range(5))  # first pass covers the whole set
