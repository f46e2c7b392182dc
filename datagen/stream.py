"""Deterministic, resumable sample streams for online training.

A *stream* turns a source of samples (a generator that synthesises them, or WebDataset shards
that hold them) into an ``IterableDataset`` whose output is fully determined by
``(seed, slot, position)``:

* ``slot = rank * num_workers + worker`` -- every DataLoader worker of every rank owns one slot,
  so no two ranks or workers ever produce the same sample;
* ``position`` counts the samples a slot has *attempted* (valid or not); it is what a resumed run
  restarts from, so it continues with exactly the samples an uninterrupted run would have seen.

Each yielded sample carries bookkeeping fields (``__slot__``, ``__pos__``, ``__produced__``,
``__dropped__``) that the training side (``train.core.datamodule.OnlineDataModule``) uses to count
consumed samples and to build its ``state_dict``; counters travel inside samples because
DataLoader workers are separate processes.

This module has no Lightning import on purpose: datagen/ stays usable from plain scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datagen.generator import Sample, SampleGenerator, sample_rng  # noqa: F401  (re-exported)
from models.errors import RunAborted

log = logging.getLogger(__name__)


BOOKKEEPING_KEYS = ("__slot__", "__pos__", "__produced__", "__dropped__")

#: Invalid samples in a row (failed ``generate``, rejected by ``validate``, failed transform) after which a
#: slot stops with :class:`models.errors.RunAborted` (a ``RuntimeError``; ``synthloop`` prints its one line and
#: exits 3): a broken source, not bad luck. Single failures are dropped and counted.
#: Configs set it as ``data.init_args.max_consecutive_failures`` (:class:`train.core.datamodule.OnlineDataModule`).
DEFAULT_MAX_CONSECUTIVE_FAILURES = 1000


def _reason(sample: Any, exc: BaseException) -> str:
    """Why a sample was dropped, naming where it came from (shard and key, or the generator's key) and, for a
    missing field, which one: ``shard data/s-000003.tar key 0000000042: missing field 'txt' (has: jpg, json)``."""
    where = ""
    if isinstance(sample, dict):
        url, key = sample.get("__url__"), sample.get("__key__")
        where = (f"shard {url} " if url else "") + (f"key {key}: " if key is not None else "")
    if isinstance(exc, KeyError) and isinstance(sample, dict):
        fields = ", ".join(sorted(k for k in sample if not str(k).startswith("__")))
        return f"{where}missing field {exc.args[0]!r} (has: {fields or 'nothing'})"
    return f"{where}{type(exc).__name__}: {exc}"


def global_index(slot: int, n_slots: int, position: int) -> int:
    """Interleave slots so that (slot, position) -> index is a bijection onto 0, 1, 2, ..."""
    return position * n_slots + slot


class SlotStream(IterableDataset):
    """Base class: worker/rank bookkeeping, validation, drop counting and resume positions.

    Subclasses implement :meth:`_positions` which yields ``(position, raw_sample_or_exception)`` for a
    slot, starting at a given position.
    """

    def __init__(
        self,
        seed: int = 0,
        transform: Callable[[Sample], Sample] | None = None,
        validate: Callable[[Sample], str | None] | None = None,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ) -> None:
        super().__init__()
        self.seed = int(seed)
        self.transform = transform
        self.validate = validate
        self.max_consecutive_failures = max_consecutive_failures
        self.rank = 0
        self.world_size = 1
        # slot -> next position to attempt (filled by load_state / resume)
        self.start_positions: dict[int, int] = {}
        # slot -> counters at the start position (so counters continue across resumes)
        self.start_counters: dict[int, tuple[int, int]] = {}
        # A DataLoader hands out batches round-robin from worker 0. A run resumed after n batches
        # must continue with the slot whose turn it was, so worker w serves slot (w + offset) % W.
        self.worker_offset = 0

    # -- distributed placement ------------------------------------------------------------------
    def set_rank(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = int(rank), int(world_size)

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.worker_offset) % num_workers
        return self.rank * num_workers + worker, self.world_size * num_workers

    # -- to be implemented ----------------------------------------------------------------------
    def _positions(self, slot: int, n_slots: int, start: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(position, sample)`` or ``(position, exception)`` from ``start`` on."""
        raise NotImplementedError

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        slot, n_slots = self._slot()
        start = self.start_positions.get(slot, 0)
        produced, dropped = self.start_counters.get(slot, (0, 0))
        failures_in_row = 0
        for pos, raw in self._positions(slot, n_slots, start):
            reason = None
            sample = None
            if isinstance(raw, BaseException):
                reason = f"{type(raw).__name__}: {raw}"
            else:
                try:
                    if self.validate is not None:
                        reason = self.validate(raw)
                    if reason is None:
                        sample = self.transform(raw) if self.transform is not None else raw
                except Exception as exc:  # a bad sample must never stop training: drop and count
                    reason = _reason(raw, exc)
            if reason is not None:
                dropped += 1
                failures_in_row += 1
                if dropped <= 5 or dropped % 1000 == 0:
                    log.warning("dropped sample slot=%d pos=%d (%d dropped so far): %s", slot, pos, dropped, reason)
                if failures_in_row >= self.max_consecutive_failures:
                    last = " ".join(str(reason).split())[:300]  # one line: the worker re-raise keeps the last
                    raise RunAborted(
                        f"{type(self).__name__}: {failures_in_row} samples in a row were invalid in slot {slot} "
                        f"(last at position {pos}: {last}); the source is broken, fix it before training"
                    )
                continue
            failures_in_row = 0
            produced += 1
            sample["__slot__"] = slot
            sample["__pos__"] = pos
            sample["__produced__"] = produced
            sample["__dropped__"] = dropped
            yield sample


class GeneratorStream(SlotStream):
    """An endless online stream from a :class:`SampleGenerator`.

    Sample ``index = position * n_slots + slot`` is made by ``generator.generate(sample_rng(seed, index), index)``.
    A generator may also define ``validate(sample) -> str | None`` (reason to reject, or None).
    """

    def __init__(self, generator: SampleGenerator, seed: int = 0, transform=None, validate=None,
                 sample_timeout: float | None = None, **kw) -> None:
        if validate is None:
            validate = getattr(generator, "validate", None)
        super().__init__(seed=seed, transform=transform, validate=validate, **kw)
        if sample_timeout is not None and not sample_timeout > 0:
            from models.errors import UserError

            raise UserError(f"sample_timeout: must be > 0 seconds (or null: no limit), got {sample_timeout!r}")
        self.generator = generator
        self.sample_timeout = sample_timeout

    def _positions(self, slot: int, n_slots: int, start: int):
        pos = start
        timed = _TimedCalls(self.sample_timeout) if self.sample_timeout else None
        while True:
            index = global_index(slot, n_slots, pos)
            try:
                rng = sample_rng(self.seed, index)
                if timed is None:
                    raw = self.generator.generate(rng, index)
                else:
                    raw = timed.call(self.generator.generate, rng, index, where=f"slot {slot}, index {index}")
                if isinstance(raw, dict):
                    raw.setdefault("__key__", f"{index:010d}")
            except RunAborted:
                raise
            except Exception as exc:  # counted and dropped by SlotStream
                raw = exc
            yield pos, raw
            pos += 1


class SampleTimeout(Exception):
    """``generate`` did not return within ``sample_timeout`` seconds (the sample is dropped and counted)."""


class _TimedCalls:
    """Runs each ``generate`` call in a helper thread and waits at most ``seconds`` for it.

    A Python thread cannot be stopped: a call that times out is abandoned (it may still finish in the
    background; its result is discarded) and the next call gets a fresh thread. Seeds come from the
    sample index, so the samples that do arrive are the same as without the limit. When
    :data:`MAX_ABANDONED` abandoned calls are still running, the generator is hanging, not slow: the
    stream stops with :class:`models.errors.RunAborted`.
    """

    MAX_ABANDONED = 8

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.pool: ThreadPoolExecutor | None = None
        self.abandoned: list[Future] = []

    def call(self, fn, *args, where: str):
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthloop-generate")
        future = self.pool.submit(fn, *args)
        try:
            return future.result(timeout=self.seconds)
        except FutureTimeout:
            self.pool.shutdown(wait=False)  # its one thread is busy: the next call gets a new pool
            self.pool = None
            self.abandoned = [f for f in self.abandoned if not f.done()] + [future]
            if len(self.abandoned) >= self.MAX_ABANDONED:
                raise RunAborted(f"the generator hangs: {len(self.abandoned)} generate calls are still running after "
                                 f"sample_timeout={self.seconds:g} s (last at {where}); fix the generator") from None
            raise SampleTimeout(f"generate did not return within sample_timeout={self.seconds:g} s ({where})") from None


def strip_bookkeeping(sample: Sample) -> Sample:
    """A copy of ``sample`` without the stream's bookkeeping fields."""
    return {k: v for k, v in sample.items() if k not in BOOKKEEPING_KEYS}


def take(stream: IterableDataset, n: int) -> list[Sample]:
    """First ``n`` samples of a stream in the main process (handy for tests, exports and previews)."""
    out = []
    for s in stream:
        out.append(s)
        if len(out) >= n:
            break
    return out


def seed_everything_for_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: keep torch's own RNG in workers away from the parent's; survive
    a SIGTERM that is not the loader's own (see :func:`terminate_only_from_parent`)."""
    terminate_only_from_parent()
    torch.manual_seed(torch.initial_seed() % 2**31 + worker_id)


def terminate_only_from_parent() -> None:
    """In a DataLoader worker: end on the parent's SIGTERM, ignore anyone else's.

    SLURM (``scancel --signal=TERM``, a time limit, a pre-emption) signals every process of the job
    step, data workers included; a worker killed by it makes the training process fail ("DataLoader
    worker ... is killed by signal: Terminated") before it can write its SIGTERM checkpoint. The
    training process decides what that signal means. But the loader's own shutdown (and
    multiprocessing's exit handler) also ends workers with SIGTERM, so ignoring the signal outright
    hangs a stopping run. A Python handler cannot see who sent a signal, so SIGTERM stays blocked in
    every thread of the worker (:class:`WorkerLoader` forks it with the signal blocked, so the threads
    torch starts before ``worker_init_fn`` inherit the block) and a daemon thread takes it with
    ``sigwaitinfo``, which reports the sender: the parent's ends the worker the way torch's own worker
    handler does (``_exit(0)``), any other sender's is logged and ignored.
    """
    import os
    import signal
    import threading

    if not hasattr(signal, "sigwaitinfo"):  # not POSIX: keep torch's handler
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid in (parent, os.getppid()):
                os._exit(0)
            log.warning("data worker %d: ignored SIGTERM from pid %d (the training process decides when to stop)",
                        os.getpid(), info.si_pid)

    threading.Thread(target=wait, name="synthloop-worker-sigterm", daemon=True).start()


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes are forked with SIGTERM blocked (see
    :func:`terminate_only_from_parent`, which its workers must run as or inside ``worker_init_fn``).
    The block is lifted in the training process as soon as the workers exist."""

    def _get_iterator(self):
        import signal

        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super()._get_iterator()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
