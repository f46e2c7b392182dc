"""WebDataset shard export and import.

Export (:func:`write_shards`, :func:`export_stream`) turns samples into ``{prefix}-%06d.tar`` shards in the
layout open_clip's trainer reads (``<key>.jpg`` + ``<key>.txt``); import (:class:`ShardStream`) reads them
back through the same deterministic, resumable slot machinery as the online generator streams
(:mod:`datagen.stream`), so a run can switch between online data and frozen shards without changes on the
training side.

Field <-> tar member mapping (the same in both directions, so a round trip restores field names)::

    "image"   PIL image      -> <key>.jpg | <key>.png        (open_clip's main image)
    "<f>"     PIL image      -> <key>.<f>.jpg | <key>.<f>.png
    "txt"     str            -> <key>.txt                    (open_clip's caption)
    "<f>"     str            -> <key>.<f>.txt
    "json"    dict/list      -> <key>.json
    "<f>"     dict/list/float/bool/None -> <key>.<f>.json
    "label"   int            -> <key>.cls
    "<f>"     int            -> <key>.<f>.cls
    "<f>"     numpy array    -> <key>.<f>.npy
    "<f>"     bytes          -> <key>.<f>                    (stored as is, read back as bytes)

Keys (``__key__``) must not contain ``.``: WebDataset splits member names at the first dot.
"""

from __future__ import annotations

import glob as globlib
import io
import itertools
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm
from webdataset.tariterators import base_plus_ext

from datagen.stream import GeneratorStream, Sample, SlotStream, strip_bookkeeping

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# open_clip's get_dataset_size() reads this file next to the shards, so --train-num-samples becomes optional.
SIZES_NAME = "sizes.json"
MAIN_IMAGE_FIELD = "image"
MAIN_LABEL_FIELD = "label"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TMP_SUFFIX = ".tmp"


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------
def _encode_image(img: Image.Image, fmt: str, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        # JPEG has no alpha / palette: convert instead of letting PIL raise deep inside an export.
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


def encode_sample(
    sample: Sample, image_format: str = "jpg", jpeg_quality: int = 95, aux_image_format: str | None = None
) -> dict[str, Any]:
    """Encode one sample into ``{"__key__": str, extension: bytes, ...}`` (see the module docstring).

    Keys starting with ``_`` other than ``__key__`` (bookkeeping, ``__url__``) are dropped. Raises
    ``TypeError`` for a value type with no mapping and ``ValueError`` for a field name with ``.`` or ``/``.
    """
    aux_image_format = aux_image_format or image_format
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for name, value in sample.items():
        if name.startswith("_"):
            continue
        if "." in name or "/" in name:
            raise ValueError(f"field name {name!r} may not contain '.' or '/' (it becomes a tar member extension)")
        if isinstance(value, Image.Image):
            if name == MAIN_IMAGE_FIELD:
                ext, data = image_format, _encode_image(value, image_format, jpeg_quality)
            else:
                ext, data = f"{name}.{aux_image_format}", _encode_image(value, aux_image_format, jpeg_quality)
        elif isinstance(value, str):
            ext, data = ("txt" if name == "txt" else f"{name}.txt"), value.encode("utf-8")
        elif isinstance(value, (bool, np.bool_)):  # before int: bool is an int subclass but is not a class label
            ext, data = f"{name}.json", _json_bytes(bool(value))
        elif isinstance(value, (int, np.integer)):
            ext, data = ("cls" if name == MAIN_LABEL_FIELD else f"{name}.cls"), str(int(value)).encode("ascii")
        elif isinstance(value, (dict, list, tuple, float, type(None))):
            ext, data = ("json" if name == "json" else f"{name}.json"), _json_bytes(value)
        elif isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            ext, data = f"{name}.npy", buf.getvalue()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            ext, data = name, bytes(value)
        else:
            raise TypeError(
                f"field {name!r} of sample {sample['__key__']!r}: no shard encoding for {type(value).__name__}"
            )
        if ext in out:
            raise ValueError(f"sample {sample['__key__']!r}: two fields map to the same member extension {ext!r}")
        out[ext] = data
    return out


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------
def _decode_image(data: bytes, rgb: bool) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # force the full decode here so a truncated image fails now, not later in a worker's transform
    return img.convert("RGB") if rgb and img.mode != "RGB" else img


def decode_members(key: str, url: str, members: dict[str, bytes]) -> Sample:
    """Decode one sample's tar members (extension -> bytes) into fields; inverse of :func:`encode_sample`."""
    sample: Sample = {"__key__": key, "__url__": url}
    for ext, data in members.items():
        last = ext.rsplit(".", 1)[-1]
        name = ext.rsplit(".", 1)[0] if "." in ext else None  # None: a bare extension (jpg, txt, json, cls)
        if last in IMAGE_EXTS:
            # main image -> RGB (what open_clip and most transforms expect); aux images keep their mode (masks)
            sample[name or MAIN_IMAGE_FIELD] = _decode_image(data, rgb=name is None)
        elif last == "txt":
            sample[name or "txt"] = data.decode("utf-8")
        elif last == "json":
            sample[name or "json"] = json.loads(data.decode("utf-8"))
        elif last == "cls":
            sample[name or MAIN_LABEL_FIELD] = int(data.decode("ascii").strip())
        elif last == "npy":
            sample[name or "npy"] = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            sample[ext] = data
    return sample


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


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable; not possible on every platform, and not worth failing an export over.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: str, obj: Any) -> None:
    tmp = path + _TMP_SUFFIX
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


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
        os.replace(self.tmp, self.path)
        _fsync_dir(os.path.dirname(self.path) or ".")

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
    at the end.
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
            encoded = encode_sample(sample, image_format, jpeg_quality, aux_image_format)
            if shard is not None and (shard.count >= maxcount or shard.size >= maxsize):
                shard.commit()
                names.append(os.path.basename(shard.path))
                counts.append(shard.count)
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
        "shards": [{"name": n, "count": c} for n, c in zip(names, counts)],
        "total": info.total,
        "image_format": image_format,
        "aux_image_format": aux_image_format,
        "jpeg_quality": jpeg_quality if "jpg" in (image_format, aux_image_format) else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_samples": n_done,
        "meta": info.meta,
    }
    _atomic_write_json(os.path.join(out_dir, SIZES_NAME), dict(zip(names, counts)))
    _atomic_write_json(info.manifest_path, manifest)
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
