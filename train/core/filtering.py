"""An online filter stage between the DataLoader and the trainer: :class:`BatchFilter`, :class:`FilteredLoader`.

A filter decides, per sample, whether the trainer sees it (UniFilter's quality scorer is one:
:class:`train.unifilter.online.ScoreFilter`). The work is split so that the model runs where it should:

* **in the DataLoader workers** only :meth:`BatchFilter.sample_fields` runs: cheap per-sample inputs the
  filter will need (its own image preprocessing, the caption), added to the training sample under names
  starting with ``_filter_``;
* **in the training process**, on the filter's device, :class:`FilteredLoader` takes each collated batch,
  calls :meth:`BatchFilter.decide` on the whole batch at once, keeps the chosen samples and re-batches them to
  exactly ``batch_size`` (kept samples wait in a FIFO buffer for the next batch), so every training step
  gets a full batch whatever the keep rate. The ``_filter_`` fields never reach the model.

Exact resume. Every batch handed to the trainer carries, under bookkeeping keys, the stream positions of all
raw samples pulled to make it and the buffer left after it. :class:`train.core.OnlineDataModule` commits them
only when the trainer actually takes that batch (``on_before_batch_transfer``; Lightning fetches one batch
ahead), and its checkpoint stores the positions, the buffered kept samples (less than one batch) and the
counts. A resumed run restores the buffer and continues the stream from those positions; with a
deterministic filter (a frozen scorer) it then trains on exactly the samples an uninterrupted run would.

Counts: ``filter_seen`` (raw samples scored), ``filter_kept`` and ``filter_dropped/<reason>`` per reason, in
:meth:`OnlineDataModule.counters` (so ``data/...`` in the logs through :class:`DataMonitor`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .collate import collate_samples

BOOKKEEPING = ("__slot__", "__pos__", "__produced__", "__dropped__")
RAW_KEY, BUFFER_KEY, COUNTS_KEY = "__filter_raw__", "__filter_buffer__", "__filter_counts__"
FIELD_PREFIX = "_filter_"


class BatchFilter:
    """Base class of an online filter (module docstring). Subclasses override both methods."""

    def sample_fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Worker side: extra fields (names starting with ``_filter_``) computed from the *raw* sample."""
        return {}

    def decide(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[str | None]]:
        """Training-process side: ``(keep, reasons)`` for a collated batch: a bool tensor ``(B,)`` and, per
        sample, None when kept or a short reason (a counter name) when dropped."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "BatchFilter":
        """Move the filter's model (if any) to the trainer's device; returns self."""
        return self


class FilterTransform:
    """The worker-side transform: the trainer's own transform, plus the filter's ``_filter_`` fields."""

    def __init__(self, transform, sample_filter: BatchFilter) -> None:
        self.transform, self.sample_filter = transform, sample_filter

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        extra = self.sample_filter.sample_fields(sample)
        out = self.transform(sample) if self.transform is not None else dict(sample)
        bad = [k for k in extra if not k.startswith(FIELD_PREFIX)]
        if bad:
            raise ValueError(f"{type(self.sample_filter).__name__}.sample_fields: field names must start with "
                             f"{FIELD_PREFIX!r}, got {bad}")
        out.update(extra)
        return out


def split_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A collated batch back into per-sample dicts (tensors and lists indexed along the first dimension)."""
    n = len(batch["__slot__"]) if "__slot__" in batch else len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


class FilteredLoader:
    """Iterates a DataLoader of raw batches and yields full filtered batches (module docstring).

    ``buffer`` / ``counts``: what a checkpoint restored (kept samples not yet trained on, the counts so far).
    """

    def __init__(self, loader, sample_filter: BatchFilter, batch_size: int,
                 buffer: list[dict[str, Any]] | None = None, counts: dict[str, int] | None = None) -> None:
        self.loader, self.sample_filter, self.batch_size = loader, sample_filter, batch_size
        self.buffer = list(buffer or [])
        self.counts = dict(counts or {})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raw_pending: list[dict[str, Any]] = []
        for raw in self.loader:
            raw_pending.append({k: raw[k] for k in BOOKKEEPING if k in raw})
            keep, reasons = self.sample_filter.decide(raw)
            keep = keep.detach().to("cpu", torch.bool)
            n = len(reasons)
            if keep.shape != (n,):
                raise ValueError(f"{type(self.sample_filter).__name__}.decide: keep has shape {tuple(keep.shape)}, "
                                 f"the batch holds {n} samples")
            self.counts["filter_seen"] = self.counts.get("filter_seen", 0) + n
            for i, sample in enumerate(split_batch(raw)):
                if keep[i]:
                    self.buffer.append({k: v for k, v in sample.items()
                                        if k not in BOOKKEEPING and not k.startswith(FIELD_PREFIX)})
                    self.counts["filter_kept"] = self.counts.get("filter_kept", 0) + 1
                else:
                    key = f"filter_dropped/{reasons[i] or 'unspecified'}"
                    self.counts[key] = self.counts.get(key, 0) + 1
            while len(self.buffer) >= self.batch_size:
                out = collate_samples(self.buffer[:self.batch_size])
                self.buffer = self.buffer[self.batch_size:]
                out[RAW_KEY], raw_pending = raw_pending, []
                out[BUFFER_KEY] = list(self.buffer)
                out[COUNTS_KEY] = dict(self.counts)
                yield out
