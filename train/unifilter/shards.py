"""Offline scoring and filtering of WebDataset shards with a trained UniFilter scorer (``docs/unifilter.md``).

    synthloop score  --scorer runs/unifilter/scorer --shards 'data/shard-{000000..000009}.tar' --out data/scores
    synthloop filter --shards 'data/shard-{000000..000009}.tar' --scores data/scores --out data/kept --min-score 2.5
    synthloop filter ... --top-fraction 0.5

``score`` writes one Parquet file per tar, ``<scores>/<tar name>.parquet`` with columns ``key`` (the sample
key), ``score`` (float32; NaN for a sample that has no image or no caption) and ``index`` (its place in the
tar). The file's schema metadata records the tar's sha256 and the scorer's (the sha256 of its
``checksums.sha256``), so a score file is never reused for another tar or another scorer. A tar whose score
file exists and matches is skipped (re-running resumes); a file is written to ``.partial`` and renamed when
complete, so an interrupted run never leaves a partial score file under the final name. Under ``torchrun``
(``RANK`` / ``WORLD_SIZE`` in the environment) rank ``r`` scores tars ``r, r + W, ...``: no process group is
needed, each tar is scored once.

``filter`` writes new shards (the same ``{prefix}-%06d.tar`` layout, ``manifest.json`` with checksums and
``sizes.json``, so open_clip's trainer and :class:`datagen.shards.ShardStream` read them like any of ours)
holding, byte for byte and in the original order, the samples whose score is at least ``--min-score`` or that
are in the ``--top-fraction`` of all scores (ties broken by shard order, then position). Unscored samples
(NaN) are dropped and counted. A tar whose checksum differs from its manifest, or from the one its score
file was made from, is an error naming it: damaged data is never used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from datagen.shards import MANIFEST_NAME, decode_members, expand_urls, manifest_digests, write_shards
from datagen.shards.reader import CorruptShardError, _scan_tar
from models.errors import UserError, positive_int
from models.io import CHECKSUMS, atomic_write_json, file_sha256, fsync_dir

log = logging.getLogger(__name__)

SCORE_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".partial"
META_KEY = b"synthloop.unifilter"  # Parquet schema metadata: {"tar", "tar_sha256", "scorer_sha256", ...}


# ---------------------------------------------------------------------------------------------- helpers
def score_path(scores_dir: str | os.PathLike, tar: str) -> Path:
    """Where the scores of ``tar`` live: ``<scores_dir>/<tar file name>.parquet``."""
    return Path(scores_dir) / (Path(tar).name + SCORE_SUFFIX)


def scorer_digest(scorer_dir: str | os.PathLike) -> str:
    """The scorer's identity: sha256 of its ``checksums.sha256`` (which covers every file of the folder)."""
    path = Path(scorer_dir) / CHECKSUMS
    if not path.is_file():
        raise UserError(f"{scorer_dir}: no {CHECKSUMS}; give a folder written by UniFilterScorer.save_pretrained")
    return file_sha256(path)


def checked_tars(shards: str) -> list[str]:
    """The tars of a pattern, each checked against its manifest's sha256 where one exists (error otherwise)."""
    try:
        tars = [os.path.normpath(t) for t in expand_urls(shards)]
    except FileNotFoundError as exc:
        raise UserError(f"--shards {shards}: {exc}") from None
    digests = manifest_digests(tars)
    for t in tars:
        want = digests.get(t)
        if want is not None and file_sha256(t) != want:
            raise UserError(f"{t}: its sha256 differs from the one in {Path(t).parent / MANIFEST_NAME} (the file "
                            f"changed or is damaged); re-create it, or drop it from --shards")
    return tars


def read_meta(path: Path) -> dict[str, Any]:
    """The synthloop metadata of a score file (UserError naming it if it is not one of ours or unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except Exception as exc:  # noqa: BLE001 -- any failure to read means the file cannot be trusted
        raise UserError(f"{path}: not a readable synthloop score file ({type(exc).__name__}: {exc}); delete it "
                        f"and run `synthloop score` again") from None


def read_scores(path: Path) -> tuple[list[str], list[float]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["key", "score"])
    return table.column("key").to_pylist(), table.column("score").to_pylist()


def _members(tar: str):
    try:
        yield from _scan_tar(tar, want=lambda i: True)
    except CorruptShardError as exc:
        raise UserError(f"{tar}: damaged tar ({exc}); re-create it, or drop it from --shards") from None


# ---------------------------------------------------------------------------------------------- score
def _write_scores(path: Path, keys: list[str], scores: list[float], meta: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"key": pa.array(keys, pa.string()), "score": pa.array(scores, pa.float32()),
                      "index": pa.array(range(len(keys)), pa.int64())})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def score_tar(scorer, tar: str, *, batch_size: int, device) -> tuple[list[str], list[float], int]:
    """``(keys, scores, n_unscorable)`` of one tar, in tar order. A sample with no image or no ``txt`` gets NaN."""
    import torch

    token = scorer.config.image_token
    keys: list[str] = []
    scores: list[float] = []
    pending: list[tuple[int, str, Any]] = []
    unscorable = 0

    def flush() -> None:
        if not pending:
            return
        with torch.no_grad():
            out = scorer.score([f"{token} {t}" for _, t, _ in pending], torch.stack([p for _, _, p in pending]).to(device))
        for (i, _, _), s in zip(pending, out.float().cpu().tolist()):
            scores[i] = float(s)
        pending.clear()

    for key, members in _members(tar):
        keys.append(key)
        scores.append(math.nan)
        try:
            sample = decode_members(key, tar, members)
        except Exception as exc:  # noqa: BLE001 -- an undecodable sample is unscored and counted, not fatal
            log.warning("%s: sample %s cannot be decoded (%s); left unscored", tar, key, exc)
            unscorable += 1
            continue
        if "image" not in sample or not isinstance(sample.get("txt"), str):
            unscorable += 1
            continue
        pending.append((len(keys) - 1, sample["txt"], scorer.preprocess(sample["image"])))
        if len(pending) >= batch_size:
            flush()
    flush()
    return keys, scores, unscorable


def score_shards(scorer_dir: str, shards: str, out: str, *, batch_size: int = 64, device: str = "cpu",
                 rank: int = 0, world_size: int = 1, progress: bool = True) -> dict[str, Any]:
    """Score this rank's tars of ``shards`` into ``out`` (module docstring); return a summary."""
    from tqdm.auto import tqdm

    from models.unifilter import UniFilterScorer

    tars = checked_tars(shards)
    digest = scorer_digest(scorer_dir)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(f"*{SCORE_SUFFIX}{PARTIAL_SUFFIX}"):
        if leftover.name.split(SCORE_SUFFIX)[0] in {Path(t).name for t in tars[rank::world_size]}:
            leftover.unlink()  # an interrupted writer's temporary (only this rank's tars: others may be writing)
    mine = tars[rank::world_size]
    todo, skipped = [], []
    for t in mine:
        path = score_path(out_dir, t)
        if path.is_file():
            meta = read_meta(path)
            if meta.get("tar_sha256") != file_sha256(t) or meta.get("scorer_sha256") != digest:
                what = "tar" if meta.get("tar_sha256") != file_sha256(t) else "scorer"
                raise UserError(f"{path}: made from another {what} than {t if what == 'tar' else scorer_dir}; "
                                f"delete it (or choose another --out) to score again")
            skipped.append(t)
        else:
            todo.append(t)
    summary = {"rank": rank, "world_size": world_size, "tars": len(mine), "skipped": len(skipped), "scored": 0,
               "samples": 0, "unscorable": 0, "seconds": 0.0}
    if not todo:
        return summary
    scorer = UniFilterScorer.from_pretrained(scorer_dir).to(device).eval()
    t0 = time.perf_counter()
    for t in tqdm(todo, desc=f"score rank {rank}", unit="tar", disable=not progress):
        tar_sha = file_sha256(t)
        keys, scores, bad = score_tar(scorer, t, batch_size=batch_size, device=device)
        if file_sha256(t) != tar_sha:
            raise UserError(f"{t}: changed while it was scored; score it again once it is complete")
        _write_scores(score_path(out_dir, t), keys, scores,
                      {"tar": os.path.abspath(t), "tar_sha256": tar_sha, "scorer": os.path.abspath(scorer_dir),
                       "scorer_sha256": digest, "samples": len(keys), "unscorable": bad})
        summary["scored"] += 1
        summary["samples"] += len(keys)
        summary["unscorable"] += bad
    summary["seconds"] = time.perf_counter() - t0
    summary["samples_per_s"] = summary["samples"] / max(summary["seconds"], 1e-9)
    return summary


# ---------------------------------------------------------------------------------------------- filter
def keep_masks(scores: list[list[float]], *, min_score: float | None = None,
               top_fraction: float | None = None) -> list[list[bool]]:
    """Per tar, which samples are kept: score >= ``min_score``, or the ``ceil(top_fraction * n_scored)``
    highest scores (ties: earlier tar, then earlier position). NaN (unscored) is never kept."""
    if (min_score is None) == (top_fraction is None):
        raise ValueError("give exactly one of min_score and top_fraction")
    if min_score is not None:
        return [[s == s and s >= min_score for s in tar] for tar in scores]
    ranked = sorted(((-s, ti, i) for ti, tar in enumerate(scores) for i, s in enumerate(tar) if s == s))
    n_keep = math.ceil(top_fraction * len(ranked))
    masks = [[False] * len(tar) for tar in scores]
    for _, ti, i in ranked[:n_keep]:
        masks[ti][i] = True
    return masks


def filter_shards(shards: str, scores_dir: str, out: str, *, min_score: float | None = None,
                  top_fraction: float | None = None, prefix: str = "shard", maxcount: int = 1000,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the kept samples of ``shards`` to new shards in ``out`` (module docstring); return a summary."""
    from datagen.shards.writer import _existing_shards

    if os.path.isdir(out) and _existing_shards(out, prefix) and not overwrite:
        raise UserError(f"--out {out}: already holds {prefix}-*.tar shards; pass --overwrite to replace them or "
                        f"choose another --out")
    tars = checked_tars(shards)
    per_tar_keys, per_tar_scores = [], []
    scorers = set()
    for t in tars:
        path = score_path(scores_dir, t)
        if not path.is_file():
            raise UserError(f"{t}: no score file {path}; run `synthloop score` on these shards first (or drop the "
                            f"tar from --shards)")
        meta = read_meta(path)
        if meta.get("tar_sha256") != file_sha256(t):
            raise UserError(f"{path}: made from another version of {t} (sha256 differs); score the tar again")
        scorers.add(meta.get("scorer_sha256"))
        keys, scores = read_scores(path)
        per_tar_keys.append(keys)
        per_tar_scores.append([math.nan if s is None else float(s) for s in scores])
    if len(scorers) > 1:
        raise UserError(f"{scores_dir}: its score files come from {len(scorers)} different scorers; score all "
                        f"tars with one scorer")
    masks = keep_masks(per_tar_scores, min_score=min_score, top_fraction=top_fraction)
    n_total = sum(map(len, masks))
    n_kept = sum(map(sum, masks))
    n_unscored = sum(s != s for tar in per_tar_scores for s in tar)

    def kept():
        for t, keys, mask in zip(tars, per_tar_keys, masks):
            seen = 0
            for (key, members), keep, want_key in zip(_members(t), mask, keys):
                seen += 1
                if key != want_key:
                    raise UserError(f"{t}: sample {seen - 1} is {key!r} but its score file says {want_key!r}; "
                                    f"score the tar again")
                if keep:
                    yield {"__key__": key, **members}
            if seen != len(keys):
                raise UserError(f"{t}: holds {seen} samples, its score file {len(keys)}; score the tar again")

    rule = {"min_score": min_score} if min_score is not None else {"top_fraction": top_fraction}
    image_format = _source_image_format(tars)
    info = write_shards(kept(), out, prefix=prefix, maxcount=maxcount, image_format=image_format, progress=progress,
                        overwrite=overwrite, total=n_kept, pre_encoded=True,
                        meta={"source": "synthloop filter", "shards": tars, "scores": os.path.abspath(scores_dir),
                              "scorer_sha256": next(iter(scorers), None), **rule, "total_in": n_total,
                              "kept": n_kept, "dropped_below": n_total - n_kept - n_unscored,
                              "dropped_unscored": n_unscored})
    summary = {"in": n_total, "kept": n_kept, "dropped_below": n_total - n_kept - n_unscored,
               "dropped_unscored": n_unscored, "shards": info.urls, "pattern": info.pattern, **rule}
    atomic_write_json(Path(out) / "filter_summary.json", summary)
    return summary


def _source_image_format(tars: list[str]) -> str:
    """The image format recorded in the source manifest (the filtered shards copy the bytes, so the same)."""
    for folder in sorted({os.path.dirname(t) for t in tars}):
        try:
            return json.loads((Path(folder) / MANIFEST_NAME).read_text())["image_format"]
        except (OSError, ValueError, KeyError):
            continue
    return "jpg"


# ---------------------------------------------------------------------------------------------- CLIs
def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v



def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def score_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="synthloop score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--scorer", required=True, help="a UniFilter scorer folder (save_pretrained output)")
    p.add_argument("--shards", required=True, help="brace pattern, glob or directory of .tar shards")
    p.add_argument("--out", required=True, help="folder for the per-tar Parquet score files")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None, help="default: cuda:<LOCAL_RANK> when CUDA is available, else cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not Path(a.scorer).is_dir():
        p.error(f"--scorer {a.scorer}: no such folder")
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = a.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    s = score_shards(a.scorer, a.shards, a.out, batch_size=a.batch_size, device=device, rank=rank,
                     world_size=world, progress=not a.no_progress)
    rate = f", {s['samples_per_s']:.1f} samples/s" if s["scored"] else ""
    print(f"rank {rank}/{world}: {s['tars']} tar(s), {s['scored']} scored ({s['samples']} samples, "
          f"{s['unscorable']} unscorable{rate}), {s['skipped']} already scored; scores in {a.out}")


def filter_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="synthloop filter", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--shards", required=True, help="the shards that were scored (same pattern as for score)")
    p.add_argument("--scores", required=True, help="the folder `synthloop score` wrote")
    p.add_argument("--out", required=True, help="folder for the kept samples' shards")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--min-score", type=_finite, help="keep samples scoring at least this (levels 0..3)")
    rule.add_argument("--top-fraction", type=_fraction, help="keep this fraction of the highest-scoring samples")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--maxcount", type=positive_int, default=1000, help="samples per output shard")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    s = filter_shards(a.shards, a.scores, a.out, min_score=a.min_score, top_fraction=a.top_fraction,
                      prefix=a.prefix, maxcount=a.maxcount, overwrite=a.overwrite, progress=not a.no_progress)
    print(f"kept {s['kept']} of {s['in']} samples ({s['dropped_below']} below the rule, {s['dropped_unscored']} "
          f"unscored) -> {s['pattern'] or a.out}")
