"""The online stream and DataModule: disjoint slots, drops counted, exact resume."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datagen.stream import DEFAULT_MAX_CONSECUTIVE_FAILURES, GeneratorStream, sample_rng, take
from tests.conftest import CountingGenerator
from train.core.datamodule import OnlineDataModule, collate_samples


def _keys(loader, n_batches):
    out = []
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        out.append(batch["index"].tolist())
    return out


def test_sample_is_pure_function_of_seed_and_index():
    gen = CountingGenerator()
    a = gen.generate(sample_rng(3, 17), 17)["x"]
    b = gen.generate(sample_rng(3, 17), 17)["x"]
    c = gen.generate(sample_rng(4, 17), 17)["x"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_duplicates_across_two_ranks_and_two_workers():
    seen = []
    for rank in range(2):
        stream = GeneratorStream(CountingGenerator(), seed=0)
        stream.set_rank(rank, 2)
        loader = DataLoader(stream, batch_size=8, num_workers=2, collate_fn=collate_samples)
        for batch in _keys(loader, 10):
            seen += batch
    assert len(seen) == 2 * 10 * 8
    assert len(set(seen)) == len(seen), "a sample was produced twice across ranks/workers"
    # the union is exactly the first indices of the interleaved slots: nothing skipped either
    assert sorted(seen) == list(range(len(seen)))


def test_invalid_and_failing_samples_are_dropped_and_counted():
    stream = GeneratorStream(CountingGenerator(bad_every=5, raise_every=7), seed=0)
    samples = take(stream, 30)
    idx = [s["index"] for s in samples]
    assert all(i % 5 != 0 and i % 7 != 6 for i in idx)
    last = samples[-1]
    attempted = last["__pos__"] + 1
    assert last["__produced__"] == 30
    assert last["__dropped__"] == attempted - 30
    assert last["__dropped__"] == sum(1 for i in range(attempted) if i % 5 == 0 or i % 7 == 6)


def test_persistently_broken_generator_raises_clear_error():
    stream = GeneratorStream(CountingGenerator(raise_every=1), seed=0, max_consecutive_failures=10)
    try:
        take(stream, 1)
    except RuntimeError as exc:
        assert "10 samples in a row were invalid" in str(exc) and "generator failed" in str(exc)
    else:
        raise AssertionError("expected a RuntimeError")


def test_the_consecutive_failure_limit_is_a_datamodule_setting():
    assert GeneratorStream(CountingGenerator(), seed=0).max_consecutive_failures == DEFAULT_MAX_CONSECUTIVE_FAILURES
    dm = OnlineDataModule(generator=CountingGenerator(raise_every=1), batch_size=2, max_consecutive_failures=4)
    with pytest.raises(RuntimeError, match="4 samples in a row were invalid"):
        take(dm.build_stream(), 1)
    with pytest.raises(ValueError, match="max_consecutive_failures must be >= 1"):
        OnlineDataModule(generator=CountingGenerator(), max_consecutive_failures=0)


class _Recorder(pl.LightningModule):
    """Trains a linear layer on the stream and records every batch it saw."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, max_steps, num_workers, ckpt_path=None, every=None):
    callbacks = []
    if every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every,
                                                      save_top_k=-1, filename="s{step}", auto_insert_metric_name=False))
    dm = OnlineDataModule(generator=CountingGenerator(bad_every=6), batch_size=5, num_workers=num_workers, seed=11)
    module = _Recorder()
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path,
                         enable_checkpointing=bool(every))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen, dm





@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_with_exactly_the_uninterrupted_samples(tmp_path, num_workers):
    full, dm_full = _fit(tmp_path / "full", 9, num_workers)
    first, _ = _fit(tmp_path / "part", 5, num_workers, every=5)
    ckpt = tmp_path / "part" / "ckpt" / "s5.ckpt"
    assert ckpt.exists()
    rest, dm_rest = _fit(tmp_path / "part2", 9, num_workers, ckpt_path=str(ckpt))
    assert first == full[:5]
    assert rest == full[5:], "resumed run saw different samples than the uninterrupted one"
    assert dm_rest.counters() == dm_full.counters()
    assert dm_full.counters()["consumed"] == 9 * 5
    assert dm_full.counters()["dropped_invalid"] > 0


def test_workers_survive_a_foreign_sigterm_and_end_on_the_loaders():
    """SLURM's step-wide SIGTERM reaches data workers too: they must ignore it (the training process
    decides what it means) yet still end when the loader itself shuts them down."""
    import os
    import signal
    import subprocess
    import time

    dm = OnlineDataModule(generator=CountingGenerator(), batch_size=4, num_workers=2, seed=0)
    loader = dm.make_loader(dm.build_stream())
    it = iter(loader)
    first = [next(it)["index"].tolist() for _ in range(2)]
    workers = list(it._workers)
    pids = [w.pid for w in workers]
    # sent by another process (kill(1) here, slurmstepd under SLURM): ignored
    subprocess.run(["kill", "-TERM", *map(str, pids)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    more = [next(it)["index"].tolist() for _ in range(4)]
    assert len({i for b in first + more for i in b}) == 6 * 4
    # the loader's own shutdown (SIGTERM from the parent after its join times out) still ends them
    os.kill(pids[0], signal.SIGTERM)
    workers[0].join(timeout=10)
    assert workers[0].exitcode == 0
    del it
    for w in workers:
        w.join(timeout=10)
        assert not w.is_alive()
