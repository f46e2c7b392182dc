"""The online DataModule: turns any sample source (a generator, or WebDataset shards) into batches.

The stream itself lives in :mod:`datagen.stream`; this module adds what the trainer needs:

* placing the stream on its rank, building the DataLoader (``num_workers`` 0..N);
* counting consumed samples per slot from the batches the trainer actually trains on;
* ``state_dict`` / ``load_state_dict`` with every rank's slot positions (gathered, because Lightning
  writes the checkpoint from rank 0 only), so a resumed run continues with exactly the samples an
  uninterrupted run would have seen;
* counters (produced / dropped-invalid / consumed) for logging by :class:`train.core.callbacks.DataMonitor`.

The sample -> tensors transform belongs to the model (image preprocessing, tokenizer): the DataModule
asks the attached LightningModule for ``sample_transform()`` unless one is given explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from datagen.stream import (DEFAULT_MAX_CONSECUTIVE_FAILURES, GeneratorStream, SampleGenerator, SlotStream,
                            WorkerLoader, seed_everything_for_worker)
from models.errors import UserError

from .collate import collate_samples
from .filtering import BUFFER_KEY, COUNTS_KEY, RAW_KEY, BatchFilter, FilteredLoader, FilterTransform

log = logging.getLogger(__name__)


class DataConfigError(UserError, ValueError):
    """A bad :class:`OnlineDataModule` argument: one line (``OnlineDataModule: <arg> ...``) that ``synthloop fit``
    turns into ``data.init_args.<arg>: ...``; a ValueError too, for callers that catch that."""


class OnlineDataModule(pl.LightningDataModule):
    """Batches from an online sample source, with exact resume.

    Args:
        generator: the sample generator (any object with ``generate(rng, index) -> dict``). Ignored
            when ``shards`` is given.
        shards: WebDataset shards to stream instead of generating (brace pattern, directory or glob).
        batch_size: samples per rank per step.
        num_workers: DataLoader worker processes per rank (0 = generate in the main process).
        seed: base seed; sample ``i`` of the stream is a pure function of ``(seed, i)``.
        prefetch_factor: batches each worker prepares ahead (only with ``num_workers > 0``).
        transform: sample -> training dict; by default the attached LightningModule's ``sample_transform()``.
        max_consecutive_failures: invalid samples in a row after which a stream slot stops with an error
            (a broken source); single bad samples are dropped and counted
            (:data:`datagen.stream.DEFAULT_MAX_CONSECUTIVE_FAILURES` = 1000).
        sample_timeout: seconds one ``generate`` call may take; a slower one is dropped and counted with its
            slot and index (``SampleTimeout``), and generation goes on (default null: no limit; an LLM-backed
            generator should set one). See :class:`datagen.stream.GeneratorStream`.
        sample_filter: an online filter stage (:class:`train.core.filtering.BatchFilter`, e.g.
            :class:`train.unifilter.online.ScoreFilter`): it decides per batch, in this process on the
            trainer's device, which samples are trained on; batches are refilled to ``batch_size`` and resume
            stays exact (:mod:`train.core.filtering`). Default null: every valid sample is trained on.
    """

    def __init__(
        self,
        generator: SampleGenerator | None = None,
        shards: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        prefetch_factor: int = 4,
        transform: Callable[[dict], dict] | None = None,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        sample_timeout: float | None = None,
        sample_filter: BatchFilter | None = None,
    ) -> None:
        super().__init__()
        if generator is None and shards is None:
            raise DataConfigError("OnlineDataModule: generator is missing: give `generator` (class_path/init_args "
                                  "of a sample generator, e.g. datagen.world.WorldCaptions) or `shards` (both are "
                                  "empty)")
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                 ("prefetch_factor", prefetch_factor, 1),
                                 ("max_consecutive_failures", max_consecutive_failures, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataConfigError(f"OnlineDataModule: {name} must be >= {low}, got {value!r}; set it to an "
                                      f"integer >= {low}")
        if shards is not None and not str(shards).strip():
            raise DataConfigError("OnlineDataModule: shards is empty: give a directory, glob or brace pattern of "
                                  "WebDataset shards, or null to generate online")
        self.generator = generator
        self.shards = shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.prefetch_factor = prefetch_factor
        self.transform = transform
        self.max_consecutive_failures = max_consecutive_failures
        if sample_timeout is not None and (isinstance(sample_timeout, bool) or not sample_timeout > 0):
            raise DataConfigError(f"OnlineDataModule: sample_timeout must be > 0 seconds or null, got {sample_timeout!r}")
        self.sample_timeout = sample_timeout
        if sample_filter is not None and not isinstance(sample_filter, BatchFilter):
            raise DataConfigError(f"OnlineDataModule: sample_filter must be a train.core.filtering.BatchFilter "
                                  f"(e.g. class_path train.unifilter.ScoreFilter), got {type(sample_filter).__name__}")
        self.sample_filter = sample_filter
        self.filter_buffer: list[dict[str, Any]] = []  # kept samples not yet trained on (filter only)
        self.filter_counts: dict[str, int] = {}
        # slot -> (next position, produced, dropped) as of the last consumed sample of that slot
        self.slot_state: dict[int, tuple[int, int, int]] = {}
        self.consumed = 0
        self.batches = 0  # training batches consumed on this rank
        self._restored: dict[str, Any] | None = None

    # -- construction ---------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _transform(self) -> Callable[[dict], dict] | None:
        transform = self.transform
        module = self.trainer.lightning_module if self.trainer is not None else None
        if transform is None and module is not None and hasattr(module, "sample_transform"):
            transform = module.sample_transform()
        if self.sample_filter is not None:
            return FilterTransform(transform, self.sample_filter)
        return transform

    def build_stream(self) -> SlotStream:
        """The rank-placed stream, positioned where the last consumed batch left off."""
        transform = self._transform()
        if self.shards is not None:
            from datagen.shards import ShardStream

            stream: SlotStream = ShardStream(self.shards, seed=self.seed, transform=transform,
                                             max_consecutive_failures=self.max_consecutive_failures)
        else:
            stream = GeneratorStream(self.generator, seed=self.seed, transform=transform,
                                     max_consecutive_failures=self.max_consecutive_failures,
                                     sample_timeout=self.sample_timeout)
        rank, world = self._rank_world()
        stream.set_rank(rank, world)
        self._apply_restored(world)
        stream.start_positions = {s: st[0] for s, st in self.slot_state.items()}
        stream.start_counters = {s: (st[1], st[2]) for s, st in self.slot_state.items()}
        stream.worker_offset = self.batches % max(self.num_workers, 1)
        return stream

    def make_loader(self, dataset: IterableDataset) -> DataLoader:
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = dict(prefetch_factor=self.prefetch_factor, persistent_workers=False,
                      worker_init_fn=seed_everything_for_worker)
        return WorkerLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=collate_samples, **kw)

    def train_dataloader(self) -> DataLoader | FilteredLoader:
        loader = self.make_loader(self.build_stream())
        if self.sample_filter is None:
            return loader
        if self.trainer is not None:
            self.sample_filter.to(self.trainer.strategy.root_device)
        return FilteredLoader(loader, self.sample_filter, self.batch_size, self.filter_buffer, self.filter_counts)

    def val_dataloader(self):
        """Evaluation belongs to the model (zero-shot sets, held-out games): delegate when it has some."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and type(module).val_dataloader is not pl.LightningModule.val_dataloader:
            return module.val_dataloader()
        return []

    # -- bookkeeping ----------------------------------------------------------------------------
    def record_consumed(self, batch: dict[str, Any]) -> None:
        """Advance slot positions past every sample of a batch the trainer is about to train on."""
        slots = batch.get("__slot__")
        if slots is None:
            return
        pos, prod, drop = batch["__pos__"], batch["__produced__"], batch["__dropped__"]
        for i in range(len(slots)):
            s = int(slots[i])
            nxt = int(pos[i]) + 1
            if nxt > self.slot_state.get(s, (0, 0, 0))[0]:
                self.slot_state[s] = (nxt, int(prod[i]), int(drop[i]))
        self.consumed += len(slots)
        self.batches += 1

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict):
            self.commit(batch)
        return batch

    def commit(self, batch: dict[str, Any]) -> None:
        """The trainer takes ``batch``: advance the stream positions past it (with a filter: past every raw
        sample pulled to make it) and, with a filter, take over the buffer and counts as of this batch."""
        if RAW_KEY in batch:
            for raw in batch.pop(RAW_KEY):
                self.record_consumed(raw)
            self.filter_buffer = batch.pop(BUFFER_KEY)
            self.filter_counts = batch.pop(COUNTS_KEY)
        else:
            self.record_consumed(batch)

    def counters(self) -> dict[str, int]:
        """Produced / dropped as of the consumed samples of this rank's slots, and samples consumed."""
        produced = sum(st[1] for st in self.slot_state.values())
        dropped = sum(st[2] for st in self.slot_state.values())
        return {"produced": produced, "dropped_invalid": dropped, "consumed": self.consumed, **self.filter_counts}

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        local = {"slot_state": dict(self.slot_state), "consumed": self.consumed, "batches": self.batches,
                 "filter": {"buffer": self.filter_buffer, "counts": self.filter_counts}}
        _, world = self._rank_world()
        if world > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, local)  # every rank runs dump_checkpoint, so this is collective
        else:
            gathered = [local]
        merged: dict[int, tuple[int, int, int]] = {}
        for g in gathered:
            merged.update(g["slot_state"])
        return {
            "version": 1,
            "seed": self.seed,
            "num_workers": self.num_workers,
            "world_size": world,
            "batch_size": self.batch_size,
            "slot_state": {int(k): list(v) for k, v in merged.items()},
            "consumed_per_rank": [g["consumed"] for g in gathered],
            "batches_per_rank": [g["batches"] for g in gathered],
            "filter_per_rank": [g["filter"] for g in gathered] if self.sample_filter is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state

    def _apply_restored(self, world: int) -> None:
        state, self._restored = self._restored, None
        if state is None:
            return
        mismatch = [
            f"{k}: checkpoint {state[k]} vs now {v}"
            for k, v in (("seed", self.seed), ("num_workers", self.num_workers), ("world_size", world))
            if state.get(k) != v
        ]
        if mismatch:
            # positions are per (rank, worker) slot: another layout would replay or skip samples
            log.warning("data stream resumed with a different layout (%s); the sample sequence will not "
                        "match an uninterrupted run", "; ".join(mismatch))
        rank, _ = self._rank_world()
        slots = range(rank * max(self.num_workers, 1), (rank + 1) * max(self.num_workers, 1))
        self.slot_state = {int(s): tuple(v) for s, v in state["slot_state"].items() if int(s) in slots}
        per_rank = state.get("consumed_per_rank", [])
        self.consumed = per_rank[rank] if rank < len(per_rank) else 0
        batches = state.get("batches_per_rank", [])
        self.batches = batches[rank] if rank < len(batches) else 0
        filters = state.get("filter_per_rank") or []
        if self.sample_filter is not None and not filters:
            log.warning("the checkpoint was written without a sample filter: filtering starts now, with an empty "
                        "buffer and zero counts")
        if self.sample_filter is None and filters:
            log.warning("the checkpoint was written with a sample filter and this run has none: its %d buffered "
                        "kept sample(s) are not used", sum(len(f["buffer"]) for f in filters))
        if self.sample_filter is not None and rank < len(filters):
            self.filter_buffer = list(filters[rank]["buffer"])
            self.filter_counts = dict(filters[rank]["counts"])
