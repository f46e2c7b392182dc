"""Reading WebDataset shards back: :class:`ShardStream`, damaged-shard handling, :func:`expand_urls`.

:class:`ShardStream` reads shards through the same deterministic, resumable slot machinery as the online
generator streams (:mod:`datagen.stream`), so a run can switch between online data and frozen shards without
changes on the training side. :func:`_scan_tar` is the one tar walker (also used by the writer's resume):
it detects truncation and damage that ``tarfile`` would report as a silent end of archive.
"""

from __future__ import annotations

import glob as globlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import braceexpand
import numpy as np
from webdataset.tariterators import base_plus_ext

from datagen.stream import Sample, SlotStream
from models.io import file_sha256

from .codec import MANIFEST_NAME, decode_members

log = logging.getLogger("datagen.shards")  # one logger name for the whole package (as before the split)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
class CorruptShardError(Exception):
    """A shard's tar structure is damaged (bad header, truncated member, missing end-of-archive blocks)."""


class _CorruptSample(Exception):
    """Placeholder for the sample a tar error cut off (it occupies a position, like any dropped sample)."""


def _scan_tar(path: str, want: Callable[[int], bool]) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, members)`` per sample of a tar; ``members`` maps extension -> bytes for samples where
    ``want(index_in_shard)`` is true, else None (headers only: data is seeked over, not read).

    The sample sequence is identical whether data is read or not, which is what makes resume positions
    exact: truncation is detected from member offsets against the file size, and the end of the archive is
    checked for its zero blocks because ``tarfile`` treats a bad header after the first one as a silent EOF.
    On damage the sample in progress is yielded as ``(key, _CorruptSample)`` and then ``CorruptShardError``
    is raised.
    """
    fsize = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptShardError(f"cannot open as tar: {exc}") from exc
        cur_key: str | None = None
        cur: dict[str, Any] | None = None
        cur_want = False
        index = -1
        end = 0
        error: str | None = None
        try:
            while True:
                try:
                    m = tf.next()
                except (tarfile.TarError, EOFError, OSError) as exc:
                    error = f"bad tar header after offset {end}: {exc}"
                    break
                if m is None:
                    break
                end = m.offset_data + ((m.size + 511) // 512) * 512
                if m.offset_data + m.size > fsize:
                    error = f"member {m.name} is truncated ({m.size} bytes declared, file ends first)"
                    break
                if not m.isfile():
                    continue
                key, ext = base_plus_ext(m.name)
                if key is None:
                    continue
                ext = ext.lower()
                if cur is None or key != cur_key or ext in cur:
                    if cur is not None:
                        yield cur_key, (cur if cur_want else None)
                    index += 1
                    cur_key, cur, cur_want = key, {}, want(index)
                if cur_want:
                    try:
                        cur[ext] = tf.extractfile(m).read()
                    except (tarfile.TarError, EOFError, OSError) as exc:
                        error = f"cannot read member {m.name}: {exc}"
                        break
                else:
                    cur[ext] = None
            if error is None:
                # A clean archive ends with two zero blocks right after the last member.
                f.seek(end)
                trailer = f.read(1024)
                if len(trailer) < 1024 or trailer.count(0) != 1024:
                    error = f"no end-of-archive marker after offset {end} (truncated or overwritten)"
        finally:
            tf.close()
        if error is not None:
            if cur is not None:
                yield cur_key, _CorruptSample(f"sample cut off by damage in the shard: {error}")
            raise CorruptShardError(error)
        if cur is not None:
            yield cur_key, (cur if cur_want else None)


def expand_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard paths from brace patterns, globs, directories or explicit paths (or a list of those).

    A directory means the shards in its ``manifest.json`` if there is one, else its ``*.tar`` files.
    Raises ``FileNotFoundError`` naming the pattern when nothing matches or a listed shard is missing.
    """
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        for part in braceexpand.braceexpand(item):
            if os.path.isdir(part):
                mpath = os.path.join(part, MANIFEST_NAME)
                if os.path.exists(mpath):
                    with open(mpath, encoding="utf-8") as f:
                        found = [os.path.join(part, s["name"]) for s in json.load(f)["shards"]]
                else:
                    found = sorted(globlib.glob(os.path.join(part, "*.tar")))
            elif any(c in part for c in "*?["):
                found = sorted(globlib.glob(part))
            else:
                found = [part]
            missing = [p for p in found if not os.path.isfile(p)]
            if missing:
                raise FileNotFoundError(
                    f"shard pattern {item!r}: {len(missing)} shard(s) not found, e.g. {missing[0]!r}; check the "
                    f"path and the brace range (read_manifest(out_dir)['pattern'] gives the exported one)"
                )
            out.extend(found)
    if not out:
        raise FileNotFoundError(
            f"shard pattern {urls!r} matched no files; pass a brace pattern like 'dir/shard-{{000000..000009}}.tar', "
            f"a glob, or a directory holding the .tar shards (did the export run, and into which out_dir?)"
        )
    return out


def manifest_digests(urls: Iterable[str]) -> dict[str, str]:
    """``{shard path: sha256}`` from the ``manifest.json`` beside each shard (shards written by
    :func:`datagen.shards.write_shards` since checksums were added; older or foreign shards have none)."""
    out: dict[str, str] = {}
    for folder in sorted({os.path.dirname(os.path.normpath(u)) for u in urls}):
        try:
            with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as f:
                shards = json.load(f)["shards"]
            for entry in shards:
                if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                    out[os.path.normpath(os.path.join(folder, entry["name"]))] = entry["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no (readable) manifest: the tar structure checks still apply
    return out


class ShardStream(SlotStream):
    """Samples from WebDataset shards, with the same slot/position/resume semantics as the online streams.

    Placement: in epoch ``e`` the shard list is permuted deterministically from ``(seed, e)`` (if
    ``shuffle_shards``) and shard ``i`` of that order goes to slot ``i % n_slots``. With fewer shards than
    slots, every slot reads the whole permuted concatenation instead and takes every ``n_slots``-th sample
    (slot ``s`` takes samples ``s, s + n_slots, ...``), so no slot sits idle; that costs each slot a header
    scan of every shard but is only used for small shard sets. Sample order inside a shard is kept.

    Position: the number of samples this slot has attempted, counted across epochs (damaged samples
    included), so ``start_positions[slot] = last __pos__ + 1`` resumes exactly. Skipped samples are not
    decoded and skipped shards are only header-scanned (whole shards are skipped from a cached count).

    Damage never stops training: an undecodable sample is dropped and counted by the base class
    (``__dropped__``, its reason names shard and key), a damaged or unreadable shard is logged with a
    warning (once per shard) and counted in ``corrupt_shards`` (distinct damaged shards met by this process's
    copy; DataLoader workers report theirs as ``__corrupt_shards__`` in every sample). If no shard of the set
    can be read at all, ``RuntimeError`` naming the pattern.

    ``epochs=None`` loops forever; otherwise the slot stops after that many epochs.
    """

    def __init__(
        self,
        urls: str | os.PathLike | list[str],
        seed: int = 0,
        shuffle_shards: bool = True,
        epochs: int | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        validate: Callable[[Sample], str | None] | None = None,
        **kw,
    ) -> None:
        super().__init__(seed=seed, transform=transform, validate=validate, **kw)
        self.pattern = urls if isinstance(urls, str) else repr(urls)
        self.urls = expand_urls(urls)
        self.shuffle_shards = shuffle_shards
        self.epochs = epochs
        self.corrupt_shards = 0
        self.corrupt_shard_urls: set[str] = set()
        # url -> samples (positions) in it; lets resume skip whole shards without opening them
        self._counts: dict[str, int] = {}
        self._readable: dict[str, bool] = {}
        self._digests: dict[str, str] | None = None  # from the manifests, read on first use
        self._intact_urls: dict[str, bool] = {}

    def num_samples(self) -> int:
        """Samples (positions) per epoch in all shards together, from a header scan (not per slot)."""
        return sum(self._count(u) for u in self.urls)

    # -- helpers ------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[str]:
        """The shard order of ``epoch`` (same in every process: it depends only on seed and epoch)."""
        if not self.shuffle_shards:
            return list(self.urls)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 0x5A4D]))
        return [self.urls[i] for i in rng.permutation(len(self.urls))]

    def _count(self, url: str) -> int:
        if url not in self._counts:
            n = 0
            try:
                for _ in _scan_tar(url, want=lambda i: False):
                    n += 1
            except CorruptShardError:
                pass
            self._counts[url] = n
        return self._counts[url]

    def _intact(self, url: str) -> bool:
        """False when the manifest records a sha256 for ``url`` and the file no longer has it (checked once
        per process; the shard is then skipped whole, with one warning naming it)."""
        if url not in self._intact_urls:
            if self._digests is None:
                self._digests = manifest_digests(self.urls)
            expected = self._digests.get(os.path.normpath(url))
            ok = True
            if expected is not None:
                try:
                    actual = file_sha256(url)
                except OSError as exc:
                    actual = f"unreadable ({exc})"
                ok = actual == expected
                if not ok:
                    self._mark_corrupt(url, f"sha256 {actual[:16]}... differs from {expected[:16]}... recorded in "
                                            f"{MANIFEST_NAME} (the file changed after it was written; re-export it)", 0)
            self._intact_urls[url] = ok
        return self._intact_urls[url]

    def _mark_corrupt(self, url: str, reason: str, n_read: int) -> None:
        self._readable.setdefault(url, n_read > 0)
        if url in self.corrupt_shard_urls:
            # Every epoch meets the same damage again; one warning per shard keeps endless runs' logs readable.
            log.debug("corrupt shard %s again: %s", url, reason)
            return
        self.corrupt_shard_urls.add(url)
        self.corrupt_shards = len(self.corrupt_shard_urls)
        log.warning(
            "corrupt shard %s: %s (%d samples read up to the damage; the rest of the shard is skipped)",
            url,
            reason,
            n_read,
        )

    def _any_readable(self) -> bool:
        for url in self.urls:
            if not self._intact(url):
                continue
            if url not in self._readable:
                try:
                    next(iter(_scan_tar(url, want=lambda i: False)), None)
                    self._readable[url] = True
                except CorruptShardError:
                    # readable if the damage comes after at least one good sample
                    self._readable[url] = self._count(url) > 0
            if self._readable[url]:
                return True
        return False

    # -- the stream ----------------------------------------------------------------------------------
    def _positions(self, slot: int, n_slots: int, start: int) -> Iterator[tuple[int, Any]]:
        pos = 0
        epoch = 0
        empty_epochs = 0
        while self.epochs is None or epoch < self.epochs:
            order = self.epoch_order(epoch)
            if len(order) >= n_slots:
                shards, stride, phase = order[slot::n_slots], 1, 0
            else:
                shards, stride, phase = order, n_slots, slot
            epoch_start = pos
            g_base = 0  # index of the shard's first sample in this slot's concatenation of the epoch
            for url in shards:
                # A whole shard before the resume point (cached count): skip it without opening it.
                if stride == 1 and url in self._counts and epoch_start + g_base + self._counts[url] <= start:
                    g_base += self._counts[url]
                    continue

                def want(i: int, g_base=g_base, epoch_start=epoch_start) -> bool:
                    g = g_base + i  # read data only for our samples at or after the resume point
                    return g % stride == phase and epoch_start + g // stride >= start

                if not self._intact(url):
                    self._counts.setdefault(url, 0)
                    continue
                n_in_shard = 0
                try:
                    for key, members in _scan_tar(url, want=want):
                        g = g_base + n_in_shard
                        n_in_shard += 1
                        if g % stride != phase:
                            continue
                        p = epoch_start + g // stride
                        if p < start:
                            continue
                        if isinstance(members, Exception):
                            yield p, _CorruptSample(f"shard {url} key {key}: {members}")
                            continue
                        try:
                            sample = decode_members(key, url, members)
                        except Exception as exc:  # dropped + counted by SlotStream; the reason names shard and key
                            yield p, RuntimeError(f"shard {url} key {key}: cannot decode: {type(exc).__name__}: {exc}")
                            continue
                        sample["__corrupt_shards__"] = self.corrupt_shards
                        yield p, sample
                except CorruptShardError as exc:
                    self._mark_corrupt(url, str(exc), n_in_shard)
                self._counts.setdefault(url, n_in_shard)
                g_base += n_in_shard
            # positions of ours in this epoch = number of g in [0, g_base) with g % stride == phase
            pos = epoch_start + (g_base - phase + stride - 1) // stride if g_base > phase else epoch_start
            if pos == epoch_start:
                if not self._any_readable():
                    raise RuntimeError(
                        f"ShardStream: no shard of {self.pattern!r} could be read ({len(self.urls)} shard(s), all "
                        f"damaged or not tar files; see the warnings above); re-export the data"
                    )
                empty_epochs += 1
                if self.epochs is None and empty_epochs >= 10:
                    raise RuntimeError(
                        f"ShardStream: slot {slot} of {n_slots} got no samples from {self.pattern!r} in {empty_epochs} "
                        f"epochs in a row (fewer samples than DataLoader workers x ranks?); write more samples or use "
                        f"fewer workers"
                    )
            else:
                empty_epochs = 0
            epoch += 1
