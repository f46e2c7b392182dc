"""Writing WebDataset shards: :func:`write_shards` (atomic, resumable), :func:`export_stream`, the manifest.

Every shard is written to ``<name>.tmp`` and renamed only after a clean close (file fsynced, then the
directory via :func:`models.io.fsync_dir`), so a crash never leaves a partial shard under a final name;
``manifest.json`` and ``sizes.json`` go through :func:`models.io.atomic_write_json`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from datagen.stream import GeneratorStream, Sample, SlotStream, strip_bookkeeping
from models.io import atomic_write_json, file_sha256, fsync_dir

from .codec import MANIFEST_NAME, SIZES_NAME, encode_sample
from .reader import CorruptShardError, _scan_tar

log = logging.getLogger("datagen.shards")  # one logger name for the whole package (as before the split)

_TMP_SUFFIX = ".tmp"  # the streaming shard writer's temporary (leftovers of a crashed writer are removed)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
@dataclass
class ShardSetInfo:
    """What :func:`write_shards` produced: shard file names (in ``out_dir``), per-shard counts and totals."""

    out_dir: str
    prefix: str
    shards: list[str]
    counts: list[int]
    total: int
    image_format: str
    resumed: int = 0  # samples found already written by an earlier run (resume=True)
    manifest_path: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        """Full paths of the shards, in order."""
        return [os.path.join(self.out_dir, s) for s in self.shards]

    @property
    def pattern(self) -> str:
        """Brace pattern over all shards, e.g. ``out/shard-{000000..000009}.tar`` (for open_clip ``--train-data``)."""
        if not self.shards:
            return ""
        return os.path.join(self.out_dir, f"{self.prefix}-{{{0:06d}..{len(self.shards) - 1:06d}}}.tar")


def _shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def _existing_shards(out_dir: str, prefix: str) -> list[str]:
    """Complete shards of ``prefix`` in ``out_dir`` (final names only), sorted by index."""
    pat = re.compile(re.escape(prefix) + r"-(\d{6})\.tar$")
    found = sorted((int(m.group(1)), n) for n in os.listdir(out_dir) if (m := pat.match(n)))
    return [n for _, n in found]


class _AtomicShard:
    """One shard being written: a ``TarWriter`` on ``<name>.tmp``, renamed to ``<name>`` only on a clean close."""

    def __init__(self, path: str, mtime: float | None) -> None:
        self.path = path
        self.tmp = path + _TMP_SUFFIX
        self.file = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.file, encoder=False, mtime=mtime)
        self.count = 0
        self.size = 0

    def write(self, encoded: dict[str, Any]) -> None:
        n_members = len(encoded) - 1
        self.size += self.writer.write(encoded) + 512 * n_members  # data + one tar header per member
        self.count += 1

    def commit(self) -> None:
        self.writer.close()  # writes the end-of-archive blocks; leaves our file object open
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.sha256 = file_sha256(self.tmp)  # of the bytes on disk, before the name makes them visible
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")

    def abort(self) -> None:
        try:
            # Close the tar stream before the file: its finaliser would otherwise write into a closed file.
            self.writer.close()
        except Exception:
            pass
        try:
            self.file.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike,
    prefix: str = "shard",
    maxcount: int = 1000,
    maxsize: float = 3e9,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    meta: dict | None = None,
    total: int | None = None,
    aux_image_format: str | None = None,
    mtime: float | None = 0.0,
    pre_encoded: bool = False,
) -> ShardSetInfo:
    """Write ``samples`` to WebDataset shards ``out_dir/{prefix}-%06d.tar`` and a ``manifest.json``.

    A new shard starts after ``maxcount`` samples or about ``maxsize`` bytes. Each shard is written to
    ``<name>.tmp`` and renamed when complete, so a crash never leaves a partial shard under a final name.
    ``resume=True`` keeps the complete shards of an earlier (interrupted) run with the same prefix, skips
    as many samples of ``samples`` as they hold (checking that keys match) and continues the numbering;
    the iterable must therefore reproduce the same samples in the same order. Without ``resume``, existing
    shards of ``prefix`` raise ``FileExistsError`` unless ``overwrite=True`` (which deletes them first).

    Samples need a unique ``__key__`` without ``.``; a sample without one gets ``f"{i:09d}"`` from a running
    counter. ``image_format`` is ``"jpg"`` or ``"png"`` (``aux_image_format`` for image fields other than
    ``"image"``, default the same). ``mtime`` is stamped on every tar member (fixed by default so re-running an
    export gives byte-identical shards; None = now). ``total`` only sizes the progress bar. ``meta`` (JSON-able)
    is stored in the manifest. ``manifest.json`` and ``sizes.json`` (read by open_clip) are written atomically
    at the end. ``pre_encoded=True``: the samples are already ``{"__key__", extension: bytes}`` member dicts
    (as read from another shard set); they are written byte for byte, not re-encoded.
    """
    image_format = image_format.lower().replace("jpeg", "jpg")
    aux_image_format = (aux_image_format or image_format).lower().replace("jpeg", "jpg")
    for fmt in (image_format, aux_image_format):
        if fmt not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {fmt!r}")
    if maxcount < 1:
        raise ValueError("maxcount must be >= 1")
    if not prefix or "/" in prefix:
        raise ValueError(f"prefix {prefix!r} must be a non-empty file name prefix without '/'")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    # Leftover temp files are the remains of a crashed writer; they are never valid shards.
    for n in os.listdir(out_dir):
        if n.startswith(prefix + "-") and n.endswith(".tar" + _TMP_SUFFIX):
            os.remove(os.path.join(out_dir, n))

    existing = _existing_shards(out_dir, prefix)
    names: list[str] = []
    counts: list[int] = []
    digests: list[str] = []
    done_keys: list[str] = []
    if existing and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds {len(existing)} shard(s) named {prefix}-*.tar; pass resume=True to continue "
                f"that export, overwrite=True to replace it, or choose another out_dir/prefix"
            )
        for n in existing:
            os.remove(os.path.join(out_dir, n))
        existing = []
    for i, n in enumerate(existing):
        if n != _shard_name(prefix, i):
            raise RuntimeError(f"cannot resume in {out_dir}: shard {_shard_name(prefix, i)} is missing (found {n})")
        # Complete shards were renamed only after a clean close, so any read error here is real damage.
        try:
            keys = [key for key, _ in _scan_tar(os.path.join(out_dir, n), want=lambda i: False)]
        except CorruptShardError as exc:
            raise RuntimeError(f"cannot resume in {out_dir}: complete shard {n} is damaged ({exc}); delete it and "
                               f"every later shard, then resume again") from exc
        names.append(n)
        counts.append(len(keys))
        digests.append(file_sha256(os.path.join(out_dir, n)))
        done_keys.extend(keys)
    n_done = len(done_keys)
    seen_keys = set(done_keys)

    it = iter(samples)
    pbar = tqdm(total=total, unit="sample", dynamic_ncols=True, disable=not progress, desc=f"shards {prefix}")
    shard: _AtomicShard | None = None
    counter = 0  # running sample index (for generated keys and resume checks)
    try:
        # Skip what the earlier run already wrote; the iterable still produces these samples (it has no
        # other way to advance), but nothing is encoded or written.
        skipped = 0
        for sample in itertools.islice(it, n_done):
            key = sample.get("__key__")
            if key is not None and str(key) != done_keys[skipped]:
                raise ValueError(
                    f"resume: sample {skipped} has key {key!r} but the existing shards hold {done_keys[skipped]!r} "
                    f"there; the samples differ from the earlier run (other seed/source?): use resume=False"
                )
            skipped += 1
            pbar.update(1)
        if skipped < n_done:
            log.warning(
                "resume: the samples ended after %d of the %d already written; nothing new to write", skipped, n_done
            )
        counter = n_done
        for sample in it:
            sample = dict(sample)
            key = sample.get("__key__")
            key = f"{counter:09d}" if key is None else str(key)
            if "." in key:
                raise ValueError(f"sample key {key!r} contains '.', which WebDataset readers split member names at")
            if key in seen_keys:
                raise ValueError(f"duplicate sample key {key!r} (sample {counter}); keys must be unique in a shard set")
            seen_keys.add(key)
            sample["__key__"] = key
            encoded = sample if pre_encoded else encode_sample(sample, image_format, jpeg_quality, aux_image_format)
            if shard is not None and (shard.count >= maxcount or shard.size >= maxsize):
                shard.commit()
                names.append(os.path.basename(shard.path))
                counts.append(shard.count)
                digests.append(shard.sha256)
                shard = None
            if shard is None:
                shard = _AtomicShard(os.path.join(out_dir, _shard_name(prefix, len(names))), mtime)
            shard.write(encoded)
            counter += 1
            pbar.update(1)
            pbar.set_postfix(shards=len(names) + 1, refresh=False)
        if shard is not None:
            shard.commit()
            names.append(os.path.basename(shard.path))
            counts.append(shard.count)
            digests.append(shard.sha256)
            shard = None
    finally:
        pbar.close()
        if shard is not None:  # an exception: drop the partial shard, keep the complete ones for resume
            shard.abort()

    info = ShardSetInfo(
        out_dir=out_dir,
        prefix=prefix,
        shards=names,
        counts=counts,
        total=sum(counts),
        image_format=image_format,
        resumed=n_done,
        manifest_path=os.path.join(out_dir, MANIFEST_NAME),
        meta=dict(meta or {}),
    )
    manifest = {
        "format": "webdataset",
        "version": 1,
        "prefix": prefix,
        "pattern": os.path.basename(info.pattern),
        "shards": [{"name": n, "count": c, "sha256": d} for n, c, d in zip(names, counts, digests)],
        "total": info.total,
        "image_format": image_format,
        "aux_image_format": aux_image_format,
        "jpeg_quality": jpeg_quality if "jpg" in (image_format, aux_image_format) else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_samples": n_done,
        "meta": info.meta,
    }
    atomic_write_json(os.path.join(out_dir, SIZES_NAME), dict(zip(names, counts)))
    atomic_write_json(info.manifest_path, manifest)
    return info


def export_stream(stream_or_generator: Any, n: int, out_dir: str | os.PathLike, seed: int = 0, **kw) -> ShardSetInfo:
    """Write the first ``n`` samples of a stream (or of a generator, wrapped in ``GeneratorStream(gen, seed)``).

    The stream is iterated in this process as slot 0 of 1 (unless ``set_rank`` was called on it), so the
    shards hold exactly what a single-process run of the stream would see first; bookkeeping fields are
    stripped. ``seed`` is ignored when a stream is passed (it has its own). Other keywords go to
    :func:`write_shards`; with ``resume=True`` the already written samples are regenerated (deterministic)
    and skipped, not re-encoded.
    """
    if isinstance(stream_or_generator, SlotStream):
        stream = stream_or_generator
    elif hasattr(stream_or_generator, "generate"):
        stream = GeneratorStream(stream_or_generator, seed=seed)
    else:
        raise TypeError(
            f"expected a SlotStream or a generator with .generate(rng, index), got {type(stream_or_generator)}"
        )
    if n < 0:
        raise ValueError("n must be >= 0")
    meta = {"source": type(getattr(stream, "generator", stream)).__name__, "seed": stream.seed, "n": n}
    meta.update(kw.pop("meta", None) or {})
    samples = (strip_bookkeeping(s) for s in itertools.islice(stream, n))
    return write_shards(samples, out_dir, meta=meta, total=kw.pop("total", n), **kw)


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` that :func:`write_shards` left in ``out_dir`` (as a dict)."""
    path = os.path.join(os.fspath(out_dir), MANIFEST_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {out_dir}: the export did not finish (rerun write_shards/export_stream with "
            f"resume=True) or this is not a shard directory written by datagen.shards"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
