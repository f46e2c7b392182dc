"""The online filter stage (train/core/filtering.py, train/unifilter/online.py): full batches whatever the keep
rate, decisions made in the training process, drops counted per reason, and exact resume (the fetch-ahead
batch is not committed; the buffer of kept samples travels in the checkpoint)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datagen.unifilter import LevelCaptions
from datagen.world import WorldCaptions
from models.errors import UserError
from models.unifilter import tiny_scorer
from train.core.datamodule import DataConfigError, OnlineDataModule
from train.core.filtering import BatchFilter

BATCH = 4


class EvenLength(BatchFilter):
    """Keeps captions of even length (about half); records the process each decision ran in."""

    def __init__(self) -> None:
        self.decided_in: set[int] = set()

    def sample_fields(self, sample):
        return {"_filter_len": len(sample["txt"])}

    def decide(self, batch):
        import os

        self.decided_in.add(os.getpid())
        keep = batch["_filter_len"] % 2 == 0
        return keep, [None if k else "odd_length" for k in keep.tolist()]


def _dm(sample_filter, workers: int = 0) -> OnlineDataModule:
    return OnlineDataModule(generator=WorldCaptions(image_size=32), batch_size=BATCH, num_workers=workers, seed=5,
                            transform=lambda s: {"txt": s["txt"]}, sample_filter=sample_filter)


def _take(dm: OnlineDataModule, n: int, fetch_ahead: bool = True) -> list[list[str]]:
    """``n`` batches as the trainer takes them: fetched one ahead (as Lightning does), committed when taken."""
    it = iter(dm.train_dataloader())
    out, nxt = [], next(it)
    for _ in range(n):
        batch = nxt
        if fetch_ahead:
            nxt = next(it)  # fetched, not yet trained on: must not count
        dm.commit(batch)
        assert set(batch) == {"txt"}  # no bookkeeping or _filter_ field reaches the model
        out.append(batch["txt"])
        if not fetch_ahead:
            nxt = next(it)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_full_batches_of_kept_samples_and_counts(workers):
    import os

    f = EvenLength()
    dm = _dm(f, workers)
    batches = _take(dm, 6)
    assert all(len(b) == BATCH for b in batches)
    assert all(len(t) % 2 == 0 for b in batches for t in b)
    c = dm.counters()
    assert c["filter_kept"] >= 6 * BATCH and c["filter_dropped/odd_length"] > 0
    assert c["filter_seen"] == c["filter_kept"] + c["filter_dropped/odd_length"] == c["consumed"]
    assert f.decided_in == {os.getpid()}  # never inside a DataLoader worker
    # the kept samples are exactly the even-length ones of the unfiltered stream, in stream order
    plain = OnlineDataModule(generator=WorldCaptions(image_size=32), batch_size=BATCH, num_workers=workers, seed=5,
                             transform=lambda s: {"txt": s["txt"]})
    it = iter(plain.train_dataloader())
    flat_plain = [t for _ in range(20) for t in next(it)["txt"]]
    assert [t for b in batches for t in b] == [t for t in flat_plain if len(t) % 2 == 0][:6 * BATCH]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_uninterrupted_batches(workers):
    reference = _take(_dm(EvenLength(), workers), 8)
    first = _dm(EvenLength(), workers)
    head = _take(first, 3)
    state = first.state_dict()
    assert 0 < len(state["filter_per_rank"][0]["buffer"]) < BATCH or state["filter_per_rank"][0]["buffer"] == []
    resumed = _dm(EvenLength(), workers)
    resumed.load_state_dict(state)
    tail = _take(resumed, 5)
    assert head + tail == reference
    assert resumed.counters() == _counters_after(8, workers)


def _counters_after(n: int, workers: int) -> dict:
    dm = _dm(EvenLength(), workers)
    _take(dm, n)
    return dm.counters()


def test_a_bad_filter_argument_is_one_line():
    with pytest.raises(DataConfigError, match="sample_filter must be a train.core.filtering.BatchFilter"):
        _dm(object())


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    from datagen.text.corpus import world_corpus

    path = tmp_path_factory.mktemp("scorer") / "scorer"
    tiny_scorer(world_corpus(n_scenes=50), vision_model="synthloop-micro-vit32", visual_grid=2, hidden=32,
                layers=1, heads=2).save_pretrained(path)
    return path


def test_score_filter_arguments(scorer_dir):
    from train.unifilter import ScoreFilter

    with pytest.raises(UserError, match="exactly one of min_score and top_fraction"):
        ScoreFilter(str(scorer_dir))
    with pytest.raises(UserError, match=r"top_fraction: must be in \(0, 1\]"):
        ScoreFilter(str(scorer_dir), top_fraction=1.5)
    with pytest.raises(UserError, match="is not a folder"):
        ScoreFilter("nowhere", min_score=2)


def _fit(tmp_path, scorer_dir, max_steps: int, ckpt: str | None = None):
    from train.clip import CLIPPretrain
    from train.unifilter import ScoreFilter

    pl.seed_everything(0, verbose=False)
    model = CLIPPretrain(model_name="synthloop-micro-vit32", warmup_steps=1, eval_families=["shape"],
                         eval_per_class=2)
    dm = OnlineDataModule(generator=LevelCaptions(image_size=32), batch_size=BATCH, num_workers=1, seed=3,
                          sample_filter=ScoreFilter(str(scorer_dir), top_fraction=0.75))
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2,
                                                                 save_top_k=-1, filename="s{step}", auto_insert_metric_name=False)])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model, dm


def test_score_filter_in_a_lightning_fit_resumes_exactly(tmp_path, scorer_dir):
    """CLIP pre-training on a stream the scorer filters (the best 3 of each raw batch of 4, so kept samples wait in the buffer across steps): restarted from the step-2
    checkpoint (written while Lightning had already fetched the next batch), the run ends with the weights,
    stream positions, buffer and counts of the uninterrupted one."""
    ref_model, ref_dm = _fit(tmp_path / "ref", scorer_dir, 4)
    c = ref_dm.counters()
    assert c["filter_kept"] >= 4 * BATCH and c["filter_dropped/outside_top_fraction"] == c["filter_seen"] // 4
    model, dm = _fit(tmp_path / "resumed", scorer_dir, 4, ckpt=str(tmp_path / "ref" / "s2.ckpt"))
    assert dm.counters() == c and dm.slot_state == ref_dm.slot_state
    assert [b["txt"] for b in dm.filter_buffer] == [b["txt"] for b in ref_dm.filter_buffer]
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
