"""The Unicorn export engine behind ``synthloop datagen unicorn`` (argument parsing lives in :mod:`datagen.cli`).

:func:`export_unicorn` runs Unicorn stages 1-2 (:class:`datagen.unicorn.stages.UnicornText`) and writes every
kept sample (``seed.txt``, ``caption.txt``, ``items.json``, ``rejects.json``, ``json``; ``clip_text.npy``
with stage 3) to ``{out}/shard-%06d.tar`` through :func:`datagen.shards.write_shards` (atomic shards,
``manifest.json``).

Sample ``i`` of the export is ``GeneratorStream(generator, seed)``'s ``i``-th kept sample: the same
samples, in the same order, as an online run with one data slot. Rejected samples (``__reject__``)
are dropped and counted by reason; the manifest's ``meta`` holds the generator config, the drop
counts (``dropped``) and the stage-2 item rejects summed over every attempted sample
(``item_rejects``).

Resume does not regenerate what is already written (with an LLM backend that would cost as much as
the first run): sample keys are the stream indices, so the stream restarts right after the last
written key. Drops of the skipped part come from ``drops.jsonl`` (one line per dropped sample,
appended as the export goes), kept-sample statistics and the stage-3 mean from the written shards.
``datagen_run.json`` (what determines the samples) must match, else resuming is refused instead of
mixing two data sets.

``concurrency=K`` generates K samples at once in threads (:class:`ConcurrentGeneratorStream`; for HTTP
backends: a vLLM/SGLang server batches concurrent requests itself, one request at a time leaves it idle).
Output is identical to ``concurrency=1``. Stage 3 (:class:`~datagen.unicorn.stage3.Stage3`) is in
:mod:`datagen.unicorn.stage3`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from datagen.shards.codec import MANIFEST_NAME
from datagen.shards.export import PREFIX, RUN_FILE, check_resumable
from datagen.shards.reader import CorruptShardError, _scan_tar
from datagen.shards.writer import _existing_shards, write_shards
from datagen.stream import GeneratorStream, SampleGenerator, global_index, sample_rng, strip_bookkeeping
from models.io import atomic_write, atomic_write_json, atomic_write_text

from .stage3 import Stage3, TextEmbedder

log = logging.getLogger(__name__)

DROPS_FILE = "drops.jsonl"  # one line per dropped sample: {"i": index, "drop": reason, "rejects": {...}}

__all__ = ["DROPS_FILE", "PREFIX", "RUN_FILE", "ConcurrentGeneratorStream", "RejectLog", "Stage3", "TextEmbedder",
           "export_unicorn", "format_summary", "run_identity"]


# ------------------------------------------------------------------------------------------------
# counting drops and rejects
# ------------------------------------------------------------------------------------------------
class _Guarded(SampleGenerator):
    """The generator with exceptions turned into counted drops (``error:<Type>``), the message logged."""

    def __init__(self, inner: SampleGenerator) -> None:
        self.inner = inner
        self.errors_logged = 0

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        try:
            return self.inner.generate(rng, index)
        except Exception as exc:  # noqa: BLE001 -- counted by reason like any rejected sample
            if self.errors_logged < 5:
                self.errors_logged += 1
                log.warning("sample %d: generate raised %s: %s", index, type(exc).__name__, exc)
            return {"__reject__": f"error:{type(exc).__name__}", "json": {"index": int(index)}}

    def validate(self, sample: dict) -> str | None:
        if "__reject__" in sample:
            return sample["__reject__"]
        validate = getattr(self.inner, "validate", None)
        return validate(sample) if validate is not None else None


class RejectLog:
    """Drop reasons and item-level rejects of an export; dropped samples are appended to ``drops.jsonl``.

    ``start`` is the first stream index this run generates: lines of an earlier run at or after it are
    discarded (those samples are generated again), the ones before it are counted.
    """

    def __init__(self, path: str, start: int, validate=None) -> None:
        self.path = path
        self.inner_validate = validate
        self.dropped: Counter = Counter()
        self.item_rejects: Counter = Counter()
        kept_lines = []
        if start > 0 and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        index = int(entry["i"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut off by a crash
                    if index < start:
                        kept_lines.append(json.dumps(entry, sort_keys=True) + "\n")
                        self._count(entry.get("drop"), entry.get("rejects"))
        atomic_write_text(path, "".join(kept_lines))
        self._file = open(path, "a", encoding="utf-8")

    def _count(self, drop: str | None, rejects: dict | None) -> None:
        if drop is not None:
            self.dropped[drop] += 1
        self.item_rejects.update(rejects or {})

    def validate(self, sample: dict) -> str | None:
        """The stream's validate: the generator's reason, counted (and logged to the file when dropped)."""
        reason = self.inner_validate(sample) if self.inner_validate is not None else sample.get("__reject__")
        rejects = sample.get("rejects") or {}
        if reason is not None:
            index = int(sample.get("__key__") or sample["json"]["index"])
            # flushed per line: a killed process loses nothing the OS has (the shards are fsynced on commit)
            self._file.write(json.dumps({"i": index, "drop": reason, "rejects": rejects}, sort_keys=True) + "\n")
            self._file.flush()
            self._count(reason, rejects)
        else:
            self.item_rejects.update(rejects)
        return reason

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------------------
# concurrent generation (HTTP backends)
# ------------------------------------------------------------------------------------------------
class ConcurrentGeneratorStream(GeneratorStream):
    """:class:`GeneratorStream` that generates up to ``concurrency`` samples at once in threads.

    Same samples in the same order (each is a pure function of ``(seed, index)``); only for generators
    whose ``generate`` is thread-safe. Up to ``2 * concurrency`` samples are in flight: the ones not
    consumed when iteration stops are cancelled or discarded.
    """

    def __init__(self, generator: SampleGenerator, concurrency: int, seed: int = 0, **kw) -> None:
        super().__init__(generator, seed=seed, **kw)
        self.concurrency = max(1, int(concurrency))

    def _one(self, index: int) -> Any:
        try:
            raw = self.generator.generate(sample_rng(self.seed, index), index)
            if isinstance(raw, dict):
                raw.setdefault("__key__", f"{index:010d}")
            return raw
        except Exception as exc:  # noqa: BLE001 -- counted and dropped by SlotStream
            return exc

    def _positions(self, slot: int, n_slots: int, start: int):
        if self.concurrency == 1:
            yield from super()._positions(slot, n_slots, start)
            return
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="datagen")
        pending: deque = deque()
        pos = start
        try:
            while True:
                while len(pending) < 2 * self.concurrency:
                    pending.append((pos, pool.submit(self._one, global_index(slot, n_slots, pos))))
                    pos += 1
                p, fut = pending.popleft()
                yield p, fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def run_identity(generator: SampleGenerator, seed: int, stage3: Stage3 | None) -> dict[str, Any]:
    """What determines the exported samples (``datagen_run.json``): resuming needs the same."""
    gen_cfg = generator.config() if hasattr(generator, "config") else {}
    ident: dict[str, Any] = {"generator_class": f"{type(generator).__module__}.{type(generator).__qualname__}",
                             "generator": gen_cfg, "seed": int(seed),
                             "stage3": None if stage3 is None else asdict(stage3)}
    # UnicornText.config() names a seed file by its line count only; the content decides the samples.
    lines = getattr(generator, "seed_lines", None)
    if lines is not None:
        ident["seed_lines_sha1"] = hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()
    if getattr(generator, "render_size", None) is not None:
        ident["render_size"] = generator.render_size
    return json.loads(json.dumps(ident, default=str))


def _read_existing(out_dir: str, stage3_field: str | None):
    """Keys and per-sample statistics of the complete shards an earlier run left (resume)."""
    keys: list[str] = []
    item_rejects: Counter = Counter()
    items_kept: Counter = Counter()
    embeddings: list[np.ndarray] = []
    for name in _existing_shards(out_dir, PREFIX):
        try:
            for key, members in _scan_tar(os.path.join(out_dir, name), want=lambda i: True):
                if isinstance(members, Exception):
                    raise CorruptShardError(str(members))
                keys.append(key)
                if "rejects.json" in members:
                    item_rejects.update(json.loads(members["rejects.json"]))
                if "items.json" in members:
                    items_kept.update(item["type"] for item in json.loads(members["items.json"]))
                if stage3_field is not None:
                    npy = members.get(f"{stage3_field}.npy")
                    if npy is None:
                        raise RuntimeError(f"cannot resume in {out_dir}: sample {key} of {name} has no "
                                           f"{stage3_field}.npy although stage 3 is on")
                    embeddings.append(np.load(io.BytesIO(npy), allow_pickle=False))
        except CorruptShardError as exc:
            raise RuntimeError(f"cannot resume in {out_dir}: complete shard {name} is damaged ({exc}); delete it "
                               f"and every later shard, then resume again") from exc
    for a, b in zip(keys, keys[1:]):
        if not (a.isdigit() and b.isdigit() and int(a) < int(b)):
            raise RuntimeError(f"cannot resume in {out_dir}: sample keys {a!r}, {b!r} are not increasing stream "
                               f"indices (not written by synthloop datagen?)")
    if keys and not keys[-1].isdigit():
        raise RuntimeError(f"cannot resume in {out_dir}: key {keys[-1]!r} is not a stream index")
    return keys, item_rejects, items_kept, embeddings


def export_unicorn(generator: SampleGenerator, out: str | os.PathLike, n: int, *, seed: int = 0,
                   resume: bool = False, overwrite: bool = False, maxcount: int = 1000,
                   image_format: str = "jpg", stage3: Stage3 | None = None, concurrency: int = 1,
                   max_consecutive_drops: int = 1000, progress: bool = True,
                   extra_meta: dict | None = None) -> dict[str, Any]:
    """Write the first ``n`` kept samples of ``GeneratorStream(generator, seed)`` to shards in ``out``.

    Returns the summary (also stored as the manifest's ``meta``): counts of written, resumed,
    attempted and dropped samples (by reason), item rejects, samples/s of this run.
    """
    out = os.fspath(out)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    os.makedirs(out, exist_ok=True)
    ident = run_identity(generator, seed, stage3)
    run_path = os.path.join(out, RUN_FILE)
    existing = _existing_shards(out, PREFIX)
    if existing and not (resume or overwrite):
        raise FileExistsError(f"{out} already holds {len(existing)} shard(s): pass --resume to continue that export, "
                              f"--overwrite to replace it, or choose another --out")
    if overwrite and not resume:
        for name in (RUN_FILE, DROPS_FILE, MANIFEST_NAME):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    if resume and existing:
        check_resumable(out, ident, PREFIX)  # one line naming each differing field
    atomic_write_json(run_path, ident)

    field = stage3.field if stage3 is not None else None
    done_keys, prev_rejects, items_kept, prev_emb = (_read_existing(out, field) if resume and existing
                                                     else ([], Counter(), Counter(), []))
    n_done = len(done_keys)
    start = int(done_keys[-1]) + 1 if done_keys else 0
    guarded = _Guarded(generator)
    drops = RejectLog(os.path.join(out, DROPS_FILE), start, validate=guarded.validate)
    drops.item_rejects.update(prev_rejects)  # kept samples' item rejects live in their shards
    embedder = TextEmbedder(stage3) if stage3 is not None else None
    if embedder is not None:
        for e in prev_emb:
            embedder.add_existing(e)

    stream = ConcurrentGeneratorStream(guarded, concurrency, seed=seed, validate=drops.validate,
                                       max_consecutive_failures=max_consecutive_drops)
    stream.start_positions = {0: start}
    stream.start_counters = {0: (n_done, start - n_done)}
    state = {"last_index": start - 1, "new": 0}
    meta: dict[str, Any] = {"command": "synthloop datagen unicorn", "source": type(generator).__name__,
                            "seed": int(seed), "n": int(n), **ident, **(extra_meta or {})}

    def samples() -> Iterator[dict]:
        # Already written samples: placeholders with their keys (write_shards skips as many as it finds).
        for key in done_keys[:n]:
            yield {"__key__": key}
        new: Iterator[dict] = (strip_bookkeeping(s) for s in itertools.islice(stream, max(0, n - n_done)))
        if embedder is not None:
            new = embedder.batched(new)
        for s in new:
            state["last_index"] = int(s["__key__"])
            state["new"] += 1
            items_kept.update(item["type"] for item in s.get("items") or ())
            s.pop("__reject__", None)
            yield s
        # Runs when write_shards asks for one more sample, i.e. before it writes the manifest with `meta`.
        meta.update(_stats(n_done, state, drops, items_kept, embedder, out, t0))

    if n_done >= n and n_done:
        log.info("%s already holds %d >= %d samples: nothing to generate", out, n_done, n)
    t0 = time.perf_counter()
    try:
        info = write_shards(samples(), out, prefix=PREFIX, maxcount=maxcount, image_format=image_format,
                            progress=progress, resume=resume, overwrite=overwrite and not resume, meta=meta,
                            total=n)
    finally:
        drops.close()
    if "written" not in meta:  # n_done > n: the generator above stopped early
        meta.update(_stats(n_done, state, drops, items_kept, embedder, out, t0))
    summary = dict(meta, total=info.total, shards=len(info.shards), pattern=info.pattern)
    return summary


def _stats(n_done: int, state: dict, drops: RejectLog, items_kept: Counter, embedder: TextEmbedder | None,
           out: str, t0: float) -> dict[str, Any]:
    elapsed = time.perf_counter() - t0
    attempted = state["last_index"] + 1
    stats: dict[str, Any] = {
        "written": state["new"], "resumed": n_done, "attempted": attempted,
        "dropped": dict(sorted(drops.dropped.items())), "dropped_total": sum(drops.dropped.values()),
        "item_rejects": dict(sorted(drops.item_rejects.items())),
        "items_kept": dict(sorted(items_kept.items())),
        "seconds": round(elapsed, 3), "samples_per_s": round(state["new"] / elapsed, 2) if elapsed > 0 else None,
    }
    if embedder is not None:
        stats["stage3"] = embedder.summary()
        if embedder.mean.count:
            path = os.path.join(out, f"{embedder.cfg.field}_mean.npy")
            buf = io.BytesIO()
            np.save(buf, embedder.mean.mean.numpy())
            atomic_write(path, buf.getvalue())
            stats["stage3"]["text_mean_file"] = os.path.basename(path)
    return stats


def format_summary(s: dict[str, Any]) -> str:
    """A few human lines from :func:`export_unicorn`'s summary."""
    kept = s["resumed"] + s["written"]
    rate = f"{100 * kept / s['attempted']:.1f}%" if s["attempted"] else "-"
    lines = [f"wrote {s['written']} samples ({s['resumed']} already there) -> {s['total']} in {s['shards']} shard(s): "
             f"{s['pattern']}",
             f"{s['samples_per_s']} samples/s over {s['seconds']:.1f} s; kept {kept} of {s['attempted']} attempted "
             f"({rate})"]
    if s["dropped"]:
        lines.append(f"dropped {s['dropped_total']}: " + ", ".join(f"{k} {v}" for k, v in
                                                                 sorted(s["dropped"].items(), key=lambda kv: -kv[1])))
    else:
        lines.append("dropped 0")
    if s["item_rejects"]:
        lines.append("item rejects: " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(s["item_rejects"].items(), key=lambda kv: -kv[1])))
    if s["items_kept"]:
        lines.append("items kept: " + ", ".join(f"{k} {v}" for k, v in s["items_kept"].items()))
    if s.get("stage3") and "count" in s["stage3"]:
        st = s["stage3"]
        lines.append(f"stage 3: {st['count']} {st['clip_model']} text embeddings (dim {st['dim']}), "
                     f"|mean| {st['text_mean_norm']:.3f} -> {st.get('text_mean_file')}")
    return "\n".join("synthloop datagen: " + line for line in lines)
