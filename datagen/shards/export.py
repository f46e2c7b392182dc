"""Resumable, identity-checked export of any sample generator to shards (``synthloop datagen world``).

:func:`export_generator` writes the first ``n`` kept samples of ``GeneratorStream(generator, seed)`` to
``{out}/shard-%06d.tar`` through :func:`datagen.shards.write_shards` (atomic shards, ``manifest.json``,
``sizes.json``): sample ``i`` of the export is the stream's ``i``-th kept sample, the same samples in the
same order as an online run with one data slot.

Running it again on the same ``out`` continues where the earlier run stopped (a killed run loses only its
partial shard). ``datagen_run.json`` records what determines the samples (generator class and arguments,
seed, image encoding); an export with a different one is refused, naming the differing field, instead of
mixing two data sets (``overwrite=True`` replaces it). When the sample keys are the stream indices (the
``__key__`` :class:`~datagen.stream.GeneratorStream` gives by default) the written part is not generated
again: the stream restarts right after the last written key. A generator that sets keys of its own is
regenerated from index 0 and the written part skipped (:func:`write_shards` checks the keys).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from datagen.stream import GeneratorStream, strip_bookkeeping
from models.io import atomic_write_json, atomic_write_text

from .codec import MANIFEST_NAME, SIZES_NAME
from .reader import CorruptShardError, _scan_tar
from .writer import _existing_shards, write_shards

RUN_FILE = "datagen_run.json"  # what determines the samples (resuming refuses a mismatch)
PREFIX = "shard"


def diff_json(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like values differ (``["seed", "generator.image_size"]``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff_json(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    return tolist() if callable(tolist) else repr(value)


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def generator_identity(generator: Any, seed: int, generator_config: dict | None = None, **extra: Any) -> dict:
    """What determines the exported samples: generator class and arguments, seed, and ``extra`` (encoding).

    ``generator_config`` is the generator's constructor arguments (what the command line parsed); without
    it, ``generator.config()`` where the generator has one, else its public attributes.
    """
    if generator_config is None:
        if callable(getattr(generator, "config", None)):
            generator_config = generator.config()
        else:
            generator_config = {k: v for k, v in vars(generator).items() if not k.startswith("_")}
    ident = {"generator_class": f"{type(generator).__module__}.{type(generator).__qualname__}",
             "generator": generator_config, "seed": int(seed), **extra}
    return json.loads(json.dumps(ident, default=_jsonable, sort_keys=True))


def check_resumable(out: str, ident: dict, prefix: str = PREFIX) -> list[str]:
    """The complete shards in ``out`` an export with identity ``ident`` may continue (``RuntimeError`` if none may).

    The error is one line naming the differing fields with both values.
    """
    existing = _existing_shards(out, prefix)
    if not existing:
        return existing
    run_path = os.path.join(out, RUN_FILE)
    if not os.path.exists(run_path):
        raise RuntimeError(f"cannot resume in {out}: it holds {len(existing)} shard(s) but no {RUN_FILE} (not "
                           f"written by synthloop datagen); use --overwrite or another --out")
    with open(run_path, encoding="utf-8") as f:
        before = json.load(f)
    diff = diff_json(before, ident)
    if "generator_class" in diff:  # another class: its arguments differ as a matter of course
        diff = ["generator_class"] + [k for k in diff if k != "generator_class" and not k.startswith("generator.")]
    if diff:
        shown = []
        for key in diff[:4]:
            was, now = (json.dumps(_lookup(d, key), sort_keys=True) for d in (before, ident))
            shown.append(f"{key} ({was[:60]} in the export, {now[:60]} now)")
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise RuntimeError(f"cannot resume in {out}: it holds an export made with other settings (different: "
                           f"{'; '.join(shown)}{more}; see {RUN_FILE}); use the same settings, --overwrite to "
                           f"replace it, or another --out")
    return existing


def _written_keys(out: str, names: list[str]) -> list[str]:
    keys: list[str] = []
    for name in names:
        try:
            keys += [key for key, _ in _scan_tar(os.path.join(out, name), want=lambda i: False)]
        except CorruptShardError as exc:
            raise RuntimeError(f"cannot resume in {out}: complete shard {name} is damaged ({exc}); delete it and "
                               f"every later shard, then run again") from exc
    return keys


def _are_stream_indices(keys: list[str]) -> bool:
    return all(k.isdigit() for k in keys) and all(int(a) < int(b) for a, b in zip(keys, keys[1:]))


def export_generator(generator: Any, out: str | os.PathLike, n: int, *, seed: int = 0, maxcount: int = 1000,
                     image_format: str = "jpg", jpeg_quality: int = 95, overwrite: bool = False,
                     generator_config: dict | None = None, progress: bool = True, max_consecutive_drops: int = 1000,
                     command: str = "datagen.shards.export_generator", extra_meta: dict | None = None,
                     config_text: str | None = None, config_file: str = "datagen_config.yaml") -> dict[str, Any]:
    """Write the first ``n`` kept samples of ``GeneratorStream(generator, seed)`` to shards in ``out``, resumably.

    See the module docstring for resume and refusal. ``n`` counts all samples of the export, the ones an
    earlier run wrote included. Returns the summary (also stored as the manifest's ``meta``): samples
    written by this run and found already written, total, attempted and dropped stream indices, shards.
    ``config_text`` (the command line's resolved config) is stored as ``config_file`` once the export is
    known to be allowed.
    """
    out = os.fspath(out)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    os.makedirs(out, exist_ok=True)
    ident = generator_identity(generator, seed, generator_config, image_format=image_format,
                               jpeg_quality=int(jpeg_quality))
    if overwrite:
        for name in (RUN_FILE, MANIFEST_NAME, SIZES_NAME):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        existing: list[str] = []
    else:
        existing = check_resumable(out, ident)
    atomic_write_json(os.path.join(out, RUN_FILE), ident)
    if config_text is not None:
        atomic_write_text(os.path.join(out, config_file), config_text)

    done_keys = _written_keys(out, existing)
    n_done = len(done_keys)
    fast = _are_stream_indices(done_keys)  # else: regenerate from index 0, write_shards skips the written part
    start = int(done_keys[-1]) + 1 if fast and done_keys else 0
    stream = GeneratorStream(generator, seed=seed, max_consecutive_failures=max_consecutive_drops)
    if fast:
        stream.start_positions = {0: start}
        stream.start_counters = {0: (n_done, start - n_done)}
    # (position, dropped) of the last sample seen: attempted = position + 1
    state = {"pos": start - 1, "dropped": start - n_done if fast else 0, "new": 0}
    meta: dict[str, Any] = {"command": command, "source": type(generator).__name__, "seed": int(seed),
                            "n": int(n), **ident, **(extra_meta or {})}

    def stats() -> dict[str, Any]:
        elapsed = time.perf_counter() - t0
        return {"written": state["new"], "resumed": n_done, "attempted": state["pos"] + 1,
                "dropped": state["dropped"], "seconds": round(elapsed, 3),
                "samples_per_s": round(state["new"] / elapsed, 2) if elapsed > 0 else None}

    def samples() -> Iterator[dict]:
        skip = 0
        if fast:  # placeholders with the written keys: write_shards skips as many as it finds
            yield from ({"__key__": key} for key in done_keys[:n])
            skip = n_done
        for s in itertools.islice(stream, max(0, n - skip)):
            state["pos"], state["dropped"] = s["__pos__"], s["__dropped__"]
            if s["__produced__"] > n_done:
                state["new"] += 1
            yield strip_bookkeeping(s)
        # Runs when write_shards asks for one more sample, i.e. before it writes the manifest with `meta`.
        meta.update(stats())

    t0 = time.perf_counter()
    info = write_shards(samples(), out, prefix=PREFIX, maxcount=maxcount, image_format=image_format,
                        jpeg_quality=jpeg_quality, progress=progress, resume=not overwrite, overwrite=overwrite,
                        meta=meta, total=n)
    if "written" not in meta:  # n_done > n: write_shards stopped asking early
        meta.update(stats())
    return dict(meta, total=info.total, shards=len(info.shards), pattern=info.pattern)
