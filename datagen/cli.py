"""``synthloop datagen``: materialise synthetic data to WebDataset shards.

    synthloop datagen unicorn --config configs/unicorn/datagen_world.yaml
    synthloop datagen unicorn --config configs/unicorn/datagen_world.yaml --n 500 --out runs/x --seed 3
    synthloop datagen unicorn --config ... --resume          # continue an interrupted (or shorter) export
    synthloop datagen unicorn --config ... --dry_run         # build generator + backend, reach it, print config
    synthloop datagen unicorn --config ... --stage3.clip_checkpoint runs/quickstart/clip_final.pt

``unicorn`` runs Unicorn stages 1-2 (:class:`datagen.unicorn.stages.UnicornText`) and writes every kept
sample (``seed.txt``, ``caption.txt``, ``items.json``, ``rejects.json``, ``json``; ``clip_text.npy``
with ``--stage3``) to ``{out}/shard-%06d.tar`` through :func:`datagen.shards.write_shards` (atomic
shards, ``manifest.json``). The generator and its text backend are given by ``class_path`` /
``init_args`` exactly as in the Lightning configs (jsonargparse), see ``configs/unicorn/datagen_*.yaml``.

Sample ``i`` of the export is ``GeneratorStream(generator, seed)``'s ``i``-th kept sample: the same
samples, in the same order, as an online run with one data slot. Rejected samples (``__reject__``)
are dropped and counted by reason; the manifest's ``meta`` holds the generator config, the drop
counts (``dropped``) and the stage-2 item rejects summed over every attempted sample
(``item_rejects``).

Resume (``--resume``) does not regenerate what is already written (with an LLM backend that would
cost as much as the first run): sample keys are the stream indices, so the stream restarts right
after the last written key. Drops of the skipped part come from ``drops.jsonl`` (one line per
dropped sample, appended as the export goes), kept-sample statistics and the stage-3 mean from
the written shards. ``datagen_run.json`` (what determines the samples) must match, else resuming
is refused instead of mixing two data sets.

``--concurrency K`` generates K samples at once in threads (for HTTP backends: a vLLM/SGLang server
batches concurrent requests itself; one request at a time leaves it idle). Output is identical to
``--concurrency 1``. The world writer and the transformers backend keep state across calls and
refuse it.

Stage 3 (``--stage3.*``): L2-normalised CLIP text embeddings of the captions, encoded in batches,
stored per sample (float16 by default) plus their corpus mean ``clip_text_mean.npy`` (float32): the
inputs of ``datagen.unicorn.transfer.modality_transfer`` (``v̂ = u − μ_T``), left to the consumer so
that every mode stays available.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from datagen.stream import GeneratorStream, SampleGenerator, global_index, sample_rng, strip_bookkeeping
from datagen.unicorn.stages import UnicornText

log = logging.getLogger(__name__)

RUN_FILE = "datagen_run.json"  # what determines the samples (resume refuses a mismatch)
DROPS_FILE = "drops.jsonl"  # one line per dropped sample: {"i": index, "drop": reason, "rejects": {...}}
CONFIG_FILE = "datagen_config.yaml"  # the fully resolved command-line config
PREFIX = "shard"
SUBCOMMANDS = {"unicorn": "Unicorn stages 1-2 (optionally 3) -> WebDataset shards"}


@dataclass
class Stage3:
    """Stage 3 at export time: CLIP text embeddings of the captions (see module docstring).

    Args:
        clip_model: open_clip model name (synthloop's tiny ones are registered by ``models.clip``).
        clip_checkpoint: local checkpoint file; None = random init (plumbing only: meaningless embeddings).
        batch_size: captions per text-tower call.
        device: torch device of the text tower.
        dtype: stored dtype of the per-sample embeddings.
        field: sample field name (tar member ``<key>.<field>.npy``).
    """

    clip_model: str = "synthloop-tiny-rn64"
    clip_checkpoint: str | None = None
    batch_size: int = 256
    device: str = "cpu"
    dtype: Literal["float16", "float32"] = "float16"
    field: str = "clip_text"


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
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept_lines)
        os.replace(tmp, path)
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
# stage 3
# ------------------------------------------------------------------------------------------------
class TextEmbedder:
    """Batched, L2-normalised CLIP text embeddings of ``caption`` fields, with their running mean."""

    def __init__(self, cfg: Stage3) -> None:
        import torch

        from datagen.unicorn.transfer import StreamingMean
        from models.clip import create_clip

        self.cfg = cfg
        if cfg.clip_checkpoint is None:
            log.warning("stage3: no clip_checkpoint given: a randomly initialised %s text tower (the embeddings "
                        "exercise the plumbing only)", cfg.clip_model)
        bundle = create_clip(cfg.clip_model, pretrained=cfg.clip_checkpoint, device=cfg.device)
        self.model, self.tokenizer = bundle.model.eval(), bundle.tokenizer
        self.device = torch.device(cfg.device)
        with torch.no_grad():
            dim = self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1]
        self.mean = StreamingMean(int(dim))

    def encode(self, texts: list[str]) -> np.ndarray:
        from models.clip import encode_text_normalized

        return encode_text_normalized(self.model, self.tokenizer, texts, self.device,
                                      batch_size=self.cfg.batch_size).cpu().numpy()

    def add_existing(self, emb: np.ndarray) -> None:
        """Count an already written embedding (resume) in the corpus mean."""
        import torch

        self.mean.update(torch.from_numpy(emb.astype(np.float32)))

    def batched(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Attach ``cfg.field`` to every sample, encoding ``batch_size`` captions at a time."""
        import torch

        it = iter(samples)
        while True:
            batch = list(itertools.islice(it, self.cfg.batch_size))
            if not batch:
                return
            emb = self.encode([s["caption"] for s in batch]).astype(self.cfg.dtype)
            # the mean of the stored values: a resumed export (which reads them back) gets the same mean
            self.mean.update(torch.from_numpy(emb.astype(np.float32)))
            for s, e in zip(batch, emb):
                s[self.cfg.field] = e
                yield s

    def summary(self) -> dict[str, Any]:
        mean = self.mean.mean.numpy() if self.mean.count else None
        return {**asdict(self.cfg), "dim": self.mean.dim, "count": self.mean.count,
                "text_mean_norm": None if mean is None else float(np.linalg.norm(mean))}


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _atomic_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


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
    from datagen.shards import CorruptShardError, _existing_shards, _scan_tar

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
                    import io

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
    from datagen.shards import MANIFEST_NAME, _existing_shards, write_shards

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
        if not os.path.exists(run_path):
            raise RuntimeError(f"cannot resume in {out}: it holds shards but no {RUN_FILE} (not written by "
                               f"synthloop datagen); use --overwrite or another --out")
        with open(run_path, encoding="utf-8") as f:
            before = json.load(f)
        diff = _diff(before, ident)
        if diff:
            raise RuntimeError(f"cannot resume in {out}: the earlier export was made with other settings "
                               f"(different: {', '.join(diff)}; see {RUN_FILE}); use the same config, --overwrite, "
                               f"or another --out")
    _atomic_json(run_path, ident)

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
            np.save(path + ".tmp.npy", embedder.mean.mean.numpy())
            os.replace(path + ".tmp.npy", path)
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


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def build_parser():
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    p = ArgumentParser(prog="synthloop datagen unicorn", exit_on_error=False,
                       description="Unicorn stages 1-2 (optionally 3) -> resumable WebDataset shards.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML config (keys as below)")
    p.add_argument("--generator", type=UnicornText, required=True,
                   help="class_path/init_args of the generator (datagen.unicorn.stages.UnicornText)")
    p.add_argument("--out", type=str, required=True, help="output directory of the shards")
    p.add_argument("--n", type=int, required=True, help="kept samples to write (in total, resumed ones included)")
    p.add_argument("--seed", type=int, default=0, help="stream seed: sample i is a pure function of (seed, i)")
    p.add_argument("--resume", action=ActionYesNo, default=False,
                   help="continue the export in --out (complete shards are kept, not regenerated)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an export in --out")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--image_format", type=Literal["jpg", "png"], default="jpg",
                   help="format of rendered images (generator.render_size only)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="samples generated at once in threads (HTTP backends only)")
    p.add_argument("--max_consecutive_drops", type=int, default=1000,
                   help="stop when this many samples in a row are rejected (a broken backend or prompt)")
    p.add_argument("--stage3", type=Stage3 | None, default=None,
                   help="also store CLIP text embeddings of the captions (stage3.clip_model, "
                        "stage3.clip_checkpoint, ...)")
    p.add_argument("--progress", action=ActionYesNo, default=True, help="tqdm progress bar")
    p.add_argument("--dry_run", action=ActionYesNo, default=False,
                   help="build generator and backend, check the backend is reachable, print the config, stop")
    return p


def _config_paths(argv: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a in ("--config", "-c") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def _fail(argv: list[str], key: str | None, message: str) -> SystemExit:
    configs = _config_paths(argv)
    where = f" in {', '.join(configs)}" if configs else ""
    return SystemExit(f"synthloop: config error{where}: {key + ': ' if key else ''}{message}")


def _check_backend(generator: Any, concurrency: int, argv: list[str]) -> None:
    """Fail now, in one line, when the backend cannot work (unreachable server, missing local model)."""
    from datagen.text import TransformersBackend, WorldWriter

    backend = getattr(generator, "backend", None)
    if concurrency > 1 and isinstance(backend, (WorldWriter, TransformersBackend)):
        why = "the scenes bound to seeds" if isinstance(backend, WorldWriter) else "the global torch RNG it seeds"
        raise _fail(argv, "concurrency", f"{type(backend).__name__} is not thread-safe ({why} are shared across "
                                         f"calls): use --concurrency 1")
    try:
        if hasattr(backend, "check"):  # OpenAIHTTPBackend: GET /v1/models
            backend.check()
        elif hasattr(backend, "load"):  # TransformersBackend: load the local model now
            backend.load()
    except Exception as exc:  # noqa: BLE001 -- one clear line instead of a traceback per sample
        hint = ""
        path = getattr(backend, "model_path", None)
        if path is not None and not os.path.exists(path):
            hint = (f"model_path {path!r} is not a local directory (a real local chat model is needed, or a hub id "
                    f"already in the local cache); ")
        raise SystemExit(f"synthloop datagen: backend {type(backend).__name__} is not usable: {hint}"
                         f"{' '.join(str(exc).split())[:400]}") from None


def unicorn_main(argv: list[str]) -> dict[str, Any] | None:
    from jsonargparse import ArgumentError

    for path in _config_paths(argv):
        if not os.path.isfile(path):
            raise SystemExit(f"synthloop: error: config file {path!r} does not exist")
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as exc:
        from datagen.errors import config_error_line

        raise _fail(argv, None, config_error_line(exc)) from None
    try:
        init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as exc:
        raise _fail(argv, "generator", f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if cfg.n < 0 or cfg.maxcount < 1 or cfg.concurrency < 1:
        bad = "n" if cfg.n < 0 else "maxcount" if cfg.maxcount < 1 else "concurrency"
        raise _fail(argv, bad, f"must be {'>= 0' if bad == 'n' else '>= 1'}, got {getattr(cfg, bad)}")
    _check_backend(init.generator, cfg.concurrency, argv)
    dumped = parser.dump(cfg)
    if cfg.dry_run:
        print(dumped)
        shown = {k: v for k, v in init.generator.config().items() if not k.endswith("_prompt")}
        print(f"synthloop datagen: dry run ok: generator {json.dumps(shown, default=str)}")
        return None
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(dumped)
    summary = export_unicorn(init.generator, cfg.out, cfg.n, seed=cfg.seed, resume=cfg.resume,
                             overwrite=cfg.overwrite, maxcount=cfg.maxcount, image_format=cfg.image_format,
                             stage3=init.stage3, concurrency=cfg.concurrency,
                             max_consecutive_drops=cfg.max_consecutive_drops, progress=cfg.progress)
    print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``synthloop datagen <kind> ...`` (also ``python -m datagen.cli <kind> ...``); returns the summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: synthloop datagen {%s} [--help] ...\n" % ",".join(SUBCOMMANDS))
        for name, what in SUBCOMMANDS.items():
            print(f"  {name:10s} {what}")
        return None
    kind, rest = argv[0], argv[1:]
    if kind not in SUBCOMMANDS:
        raise SystemExit(f"synthloop datagen: error: unknown kind {kind!r}; choose one of: {', '.join(SUBCOMMANDS)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return unicorn_main(rest)
    except (FileExistsError, RuntimeError) as exc:
        if isinstance(exc, FileExistsError) or str(exc).startswith("cannot resume"):
            raise SystemExit(f"synthloop datagen: error: {exc}") from None
        raise


if __name__ == "__main__":
    main()
