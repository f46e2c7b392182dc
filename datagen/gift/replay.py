"""GIFT replay sets: N synthetic image-prompt pairs generated at a task boundary, cached on disk.

Layout of one set (``make_replay_set`` returns the set directory)::

    <cache_root>/replay-<hash16>/          hash of (pool content, N, seed, epoch, backend config, format)
        set.json                           what the hash covers (for humans and for checks)
        w002-r000/shard-000000.tar ...     rank 0's items (0, 2, 4, ...) + manifest.json + sizes.json
        w002-r001/...                      rank 1's items (1, 3, 5, ...)
        COMPLETE                           written last, once every part has its manifest

Item ``i`` is fully determined by ``(pool, n, seed, epoch, i)``: its prompt is draw ``i`` of
``pool.sample(n, epoch_seed(seed, epoch))`` and its image seed is :func:`item_seed`, so the set is the
same whatever the world size (only the part layout differs, which is why parts are named by world
size: a partial set from another world size is simply ignored, never mixed in).

Each shard sample: ``__key__`` = f"{i:06d}", ``image`` (png), ``txt`` = the prompt, ``json`` =
``{"prompt_id", "prompt", "index", "backend", "seed"}``, plus ``"describes"`` (the ids of the other pool
prompts that truthfully describe the image) where the backend knows what it drew (the world renderer:
``generate_with_meta``). Dropped images (None or all black) are not
written; they are counted in the part manifest's meta (``dropped``, ``dropped_indices``) and in COMPLETE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from datagen.shards import MANIFEST_NAME, ShardStream, manifest_digests, read_manifest, write_shards
from models.io import atomic_write_json, file_sha256

from .backends import TextToImage, is_black
from .prompts import PromptPool, pool_summary

log = logging.getLogger(__name__)

COMPLETE_NAME = "COMPLETE"
SET_INFO_NAME = "set.json"
SHARD_PREFIX = "shard"
FORMAT_VERSION = 1
_ITEM_SALT = 0x1A6E  # item seeds live apart from the pool-draw seed space


def epoch_seed(seed: int, epoch: int = 0) -> int:
    """The seed of replay "epoch" ``epoch`` (``regenerate_each_epoch``): ``seed`` itself for epoch 0."""
    if epoch == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint32)[0])


def item_seed(seed: int, index: int, epoch: int = 0) -> int:
    """The image seed of item ``index`` (a 63-bit int, independent of rank, world size and batch)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index), _ITEM_SALT]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def replay_set_hash(pool: PromptPool, n: int, seed: int, backend: TextToImage, epoch: int = 0) -> str:
    """sha256 (hex) of everything that determines the set's content."""
    key = {"version": FORMAT_VERSION, "pool": pool.content_hash(), "n": int(n), "seed": int(seed),
           "epoch": int(epoch), "backend": backend.config(), "image_format": "png"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def replay_set_dir(cache_root: str | os.PathLike, pool: PromptPool, n: int, seed: int, backend: TextToImage,
                   epoch: int = 0) -> Path:
    """``<cache_root>/replay-<hash16>``: where :func:`make_replay_set` puts (or finds) this set."""
    return Path(cache_root) / f"replay-{replay_set_hash(pool, n, seed, backend, epoch)[:16]}"


def part_name(rank: int, world_size: int) -> str:
    """Sub-directory of rank ``rank``'s items under ``world_size`` ranks."""
    return f"w{world_size:03d}-r{rank:03d}"


def is_complete(set_dir: str | os.PathLike) -> bool:
    """Whether ``set_dir`` holds a finished set: COMPLETE present and every part it lists has a manifest."""
    marker = Path(set_dir) / COMPLETE_NAME
    if not marker.is_file():
        return False
    try:
        parts = json.loads(marker.read_text(encoding="utf-8"))["parts"]
    except (ValueError, KeyError):
        return False
    return all((Path(set_dir) / p / MANIFEST_NAME).is_file() for p in parts)


def wait_complete(set_dir: str | os.PathLike, timeout: float = 3600.0, poll: float = 1.0) -> Path:
    """Block until :func:`is_complete` (e.g. non-zero ranks waiting on a set being generated elsewhere).

    Raises TimeoutError naming the directory and what is there after ``timeout`` seconds."""
    set_dir = Path(set_dir)
    deadline = time.monotonic() + timeout
    while not is_complete(set_dir):
        if time.monotonic() >= deadline:
            parts = sorted(p.name for p in set_dir.glob("w*-r*") if (p / MANIFEST_NAME).is_file()) \
                if set_dir.is_dir() else []
            raise TimeoutError(f"replay set {set_dir} not complete after {timeout:.0f}s (finished parts: {parts})")
        time.sleep(poll)
    return set_dir


def damaged_shards(set_dir: str | os.PathLike) -> list[Path]:
    """Shards of a complete set whose bytes differ from the sha256 their part manifest recorded."""
    set_dir = Path(set_dir)
    parts = json.loads((set_dir / COMPLETE_NAME).read_text(encoding="utf-8"))["parts"]
    bad = []
    for part in parts:
        for shard, digest in sorted(manifest_digests([str(set_dir / part / MANIFEST_NAME)]).items()):
            if not os.path.isfile(shard) or file_sha256(shard) != digest:
                bad.append(Path(shard))
    return bad


def _discard_damaged(set_dir: Path, damaged: list[Path]) -> None:
    """Drop each damaged shard and every later shard of its part (and the part's manifest and COMPLETE),
    so that :func:`make_replay_set` regenerates exactly those items (generation is deterministic)."""
    log.warning("replay set %s: %d shard(s) differ from their recorded sha256 (first: %s); regenerating them",
                set_dir, len(damaged), damaged[0].name)
    (set_dir / COMPLETE_NAME).unlink(missing_ok=True)
    for part_dir in sorted({p.parent for p in damaged}):
        first = min(p.name for p in damaged if p.parent == part_dir)
        for shard in part_dir.glob("*.tar"):
            if shard.name >= first:
                shard.unlink()
        (part_dir / MANIFEST_NAME).unlink(missing_ok=True)


def _done_keys(part_dir: Path) -> list[str]:
    """Keys in the complete shards of an interrupted part, in write order (member names only, no data)."""
    pat = re.compile(re.escape(SHARD_PREFIX) + r"-(\d{6})\.tar$")
    shards = sorted((int(m.group(1)), p) for p in part_dir.glob("*.tar") if (m := pat.match(p.name)))
    keys: list[str] = []
    for _, path in shards:
        try:
            with tarfile.open(path, "r:") as tf:
                for name in tf.getnames():
                    key = os.path.basename(name).split(".", 1)[0]
                    if not keys or keys[-1] != key:
                        keys.append(key)
        except (tarfile.TarError, OSError):
            break  # write_shards(resume=True) reports the damage itself with a precise message
    return keys


def _try_mark_complete(set_dir: Path, world_size: int) -> bool:
    parts = [part_name(r, world_size) for r in range(world_size)]
    if not all((set_dir / p / MANIFEST_NAME).is_file() for p in parts):
        return False
    metas = [read_manifest(set_dir / p)["meta"] for p in parts]
    summary = {"world_size": world_size, "parts": parts, "total": sum(read_manifest(set_dir / p)["total"]
                                                                        for p in parts),
               "dropped": sum(m.get("dropped", 0) for m in metas)}
    # Every rank that sees all manifests writes the same content; atomic_write (a per-process temporary,
    # then os.replace) makes the race harmless.
    atomic_write_json(set_dir / COMPLETE_NAME, summary)
    return True


def make_replay_set(pool: PromptPool, n: int, seed: int, backend: TextToImage, out_dir: str | os.PathLike,
                    rank: int = 0, world_size: int = 1, epoch: int = 0, batch_size: int | None = None,
                    shard_size: int = 100, progress: bool = True) -> Path:
    """Generate (or find) this rank's part of the replay set; returns the set directory.

    ``out_dir`` is the cache root; the set lives in :func:`replay_set_dir`. A complete set is reused
    as is; this rank's finished part is reused; an interrupted part is resumed from its complete
    shards (``shard_size`` items each) without regenerating them. Rank ``r`` makes items
    ``r, r + W, ...``. The rank that finishes last writes COMPLETE; other ranks must wait for it
    (:func:`wait_complete`; the barrier is the caller's). ``epoch`` > 0 makes a different set from the same
    seed (``regenerate_each_epoch``). ``batch_size`` defaults to the backend's own (else 8).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    set_dir = replay_set_dir(out_dir, pool, n, seed, backend, epoch)
    if is_complete(set_dir):
        damaged = damaged_shards(set_dir)
        if not damaged:
            log.info("replay set %s is complete: reusing it (no generation)", set_dir)
            return set_dir
        if world_size > 1:
            raise RuntimeError(f"replay set {set_dir}: shard {damaged[0]} differs from the sha256 in its manifest "
                               f"({len(damaged)} damaged shard(s)); delete {set_dir} and run again to regenerate it")
        _discard_damaged(set_dir, damaged)
    part_dir = set_dir / part_name(rank, world_size)
    part_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(set_dir / SET_INFO_NAME, {
        "hash": replay_set_hash(pool, n, seed, backend, epoch), "n": n, "seed": seed, "epoch": epoch,
        "backend": backend.config(), "pool": pool_summary(pool), "format_version": FORMAT_VERSION})
    if (part_dir / MANIFEST_NAME).is_file():
        log.info("replay set %s: part %s already finished; reusing it", set_dir, part_dir.name)
    else:
        _generate_part(pool, n, seed, epoch, backend, part_dir, rank, world_size,
                       batch_size or getattr(backend, "batch_size", 8), shard_size, progress)
    if _try_mark_complete(set_dir, world_size):
        log.info("replay set %s complete", set_dir)
    return set_dir


def _generate_part(pool: PromptPool, n: int, seed: int, epoch: int, backend: TextToImage, part_dir: Path,
                   rank: int, world_size: int, batch_size: int, shard_size: int, progress: bool) -> None:
    draws = pool.sample(n, epoch_seed(seed, epoch))
    items = list(range(rank, n, world_size))
    done = _done_keys(part_dir)
    last = max((int(k) for k in done), default=-1)
    done_set = set(done)
    # Items up to the last written one that are not in the shards were dropped by the earlier run.
    dropped = [i for i in items if i <= last and f"{i:06d}" not in done_set]
    todo = [i for i in items if i > last]
    meta: dict[str, Any] = {"rank": rank, "world_size": world_size, "n": n, "seed": seed, "epoch": epoch,
                            "backend": backend.config(), "pool_hash": pool.content_hash(),
                            "items": len(items), "dropped": len(dropped), "dropped_indices": dropped}
    if done:
        log.info("replay part %s: resuming after %d written items (%d left)", part_dir, len(done), len(todo))

    def samples() -> Iterator[dict]:
        # Already written items: key-only placeholders, which write_shards(resume=True) checks and skips
        # without encoding, so resuming never regenerates an image.
        for key in done:
            yield {"__key__": key}
        bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True,
                   desc=f"replay {part_dir.name}")
        t0, made, next_log = time.perf_counter(), 0, max(1, len(todo) // 10)
        with_meta = getattr(backend, "generate_with_meta", None)  # backends that know what they drew
        try:
            for lo in range(0, len(todo), batch_size):
                idx = todo[lo:lo + batch_size]
                prompts, seeds = [draws[i][1] for i in idx], [item_seed(seed, i, epoch) for i in idx]
                images, metas = with_meta(prompts, seeds) if with_meta else (backend.generate(prompts, seeds), None)
                if len(images) != len(idx):
                    raise RuntimeError(f"{type(backend).__name__}.generate returned {len(images)} images for "
                                       f"{len(idx)} prompts")
                for k, (i, img) in enumerate(zip(idx, images)):
                    made += 1
                    if img is None or is_black(img):
                        dropped.append(i)
                        meta["dropped"] = len(dropped)
                        continue
                    pid, prompt = draws[i]
                    info = {"prompt_id": pid, "prompt": prompt, "index": i, "backend": backend.name,
                            "seed": item_seed(seed, i, epoch)}
                    if metas is not None:  # the world renderer knows what it drew: which other prompts are true
                        info["describes"] = pool.describing(metas[k], exclude=pid)
                    yield {"__key__": f"{i:06d}", "image": img.convert("RGB"), "txt": prompt, "json": info}
                bar.update(len(idx))
                if made >= next_log or made == len(todo):
                    rate = made / max(time.perf_counter() - t0, 1e-9)
                    log.info("replay %s: %d/%d images, %.2f images/s, %d dropped", part_dir.name, made,
                             len(todo), rate, len(dropped))
                    next_log = made + max(1, len(todo) // 10)
        finally:
            bar.close()

    # ``meta`` is filled while the samples are drawn; write_shards stores it after the last sample, and the
    # check below repairs the manifest should that ever change.
    write_shards(samples(), part_dir, prefix=SHARD_PREFIX, maxcount=shard_size, image_format="png",
                 progress=False, resume=True, meta=meta, total=len(items))
    manifest = read_manifest(part_dir)
    if manifest["meta"].get("dropped") != len(dropped):
        manifest["meta"] = meta
        atomic_write_json(part_dir / MANIFEST_NAME, manifest)
    if dropped:
        log.warning("replay part %s: %d of %d images dropped (all black / filtered)", part_dir, len(dropped),
                    len(items))


class ReplayDataset(Dataset):
    """Map-style dataset over a finished replay set, items in index order, all held in memory.

    ``__getitem__`` -> ``{"image": transform(PIL image) (the PIL image without transform), "prompt_id":
    int, "txt": str}``, plus ``"describes"`` (a bool multi-hot over the pool's prompt ids) when
    ``describes=True`` (the set must record it: world-rendered sets). Use the CLIP *evaluation* transform: the spec gives synthetic images no
    augmentation. ``resize`` (shorter side, bicubic) shrinks images once at load -- pass the transform's
    own input size to keep 1000 SD images at 224 px (150 MB) instead of 512 px (790 MB) in memory.
    """

    def __init__(self, set_dir: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 resize: int | None = None, describes: bool = False) -> None:
        self.set_dir = Path(set_dir)
        if not is_complete(self.set_dir):
            raise FileNotFoundError(f"{self.set_dir} is not a complete replay set (no {COMPLETE_NAME} marker or a "
                                    f"part without manifest); run make_replay_set / wait_complete first")
        self.transform = transform
        self.info = json.loads((self.set_dir / COMPLETE_NAME).read_text(encoding="utf-8"))
        urls = [str(self.set_dir / p / s["name"]) for p in self.info["parts"]
                for s in read_manifest(self.set_dir / p)["shards"]]
        rows: list[tuple[int, int, str, np.ndarray]] = []
        if urls:
            for s in ShardStream(urls, shuffle_shards=False, epochs=1):
                img = s["image"]
                if resize is not None and min(img.size) != resize:
                    w, h = img.size
                    scale = resize / min(w, h)
                    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
                rows.append((int(s["json"]["index"]), int(s["json"]["prompt_id"]), s["txt"], np.asarray(img),
                             s["json"].get("describes")))
        rows.sort(key=lambda r: r[0])
        if len(rows) != self.info["total"]:
            log.warning("replay set %s: read %d items, manifests say %d (damaged shards?)", self.set_dir,
                        len(rows), self.info["total"])
        if not rows:
            raise ValueError(f"replay set {self.set_dir} holds no images (all {self.info.get('dropped')} dropped?)")
        self.indices = [r[0] for r in rows]
        self.prompt_ids = [r[1] for r in rows]
        self.texts = [r[2] for r in rows]
        self._images = [r[3] for r in rows]
        # which other pool prompts describe each image (world-rendered sets only; None otherwise)
        self.describes = [r[4] for r in rows] if all(r[4] is not None for r in rows) else None
        self.pool_size = int(json.loads((self.set_dir / SET_INFO_NAME).read_text(encoding="utf-8"))["pool"]["size"])
        if describes and self.describes is None:
            raise ValueError(f"replay set {self.set_dir} does not record which prompts describe each image "
                             f"(only world-rendered sets written by this version do); it cannot serve ita_targets="
                             f"'describes'")
        self.with_describes = describes

    @property
    def dropped(self) -> int:
        """Images dropped at generation (all black / safety-filtered)."""
        return int(self.info.get("dropped", 0))

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, k: int) -> dict[str, Any]:
        img = Image.fromarray(self._images[k])
        out = {"image": self.transform(img) if self.transform is not None else img,
               "prompt_id": self.prompt_ids[k], "txt": self.texts[k]}
        if self.with_describes:  # multi-hot over the pool: collates to (B, pool size)
            hot = torch.zeros(self.pool_size, dtype=torch.bool)
            hot[self.describes[k]] = True
            out["describes"] = hot
        return out
