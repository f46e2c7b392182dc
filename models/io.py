"""Atomic, durable file writes: the one implementation every result, checkpoint, shard, state and table uses.

A reader (a resumed run, a consumer of the shards, a person looking at a table) must never see a torn
file, and a crash must never lose the previous complete version. :func:`atomic_write` therefore

1. writes to a hidden temporary name in the *same directory* (``.<name>.tmp-<pid>``, so the rename
   never crosses a file system and two processes never share a temporary);
2. flushes and ``fsync`` s the file;
3. ``os.replace`` s it over the target (atomic on POSIX: readers see the old or the new file, never a mix);
4. ``fsync`` s the directory, so the rename itself survives a power cut.

A failure at any point removes the temporary and leaves the target as it was. This module sits at the
bottom of the import graph (``models`` imports neither ``datagen`` nor ``train``), so all three use it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "fsync_dir", "temp_path"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames in directory ``path`` durable (a no-op where the platform cannot open directories)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> str:
    """The temporary name :func:`atomic_write` uses for ``path`` (same directory, hidden, per process)."""
    path = os.fspath(path)
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.tmp-{os.getpid()}")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], Any], *,
                 encoding: str = "utf-8") -> str:
    """Write ``data`` to ``path`` atomically and durably; return ``path``.

    ``data`` is bytes, text (written with ``encoding``, no newline translation), or a callable that
    writes the file at the temporary path it is given (``lambda p: torch.save(obj, p)``,
    ``lambda p: save_file(tensors, p)``).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
            _fsync_file(tmp)
        else:
            raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    fsync_dir(d)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """:func:`atomic_write` for text (UTF-8)."""
    return atomic_write(path, text)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      **kw: Any) -> str:
    """:func:`atomic_write` of ``json.dumps(obj)`` (sorted keys and 2-space indent by default)."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, **kw))


def remove_orphans(directory: str | os.PathLike) -> list[str]:
    """Delete what killed writers left in ``directory`` (not recursive): ``.<name>.tmp-<pid>`` files of
    :func:`atomic_write` whose process is gone, and ``.<name>.partial`` checkpoints (files or DeepSpeed
    directories) being written when a run died. Called when a run starts (rank 0, before anything is
    written); returns the removed names."""
    import shutil

    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in d.iterdir():
        name = p.name
        if not name.startswith("."):
            continue
        if ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and _alive(int(pid)):
                continue
        elif not (name.endswith(".partial") or ".partial-" in name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def torch_file_problem(path: str | os.PathLike, deep: bool = True) -> str | None:
    """None when ``path`` is a complete, intact ``torch.save`` archive, else what is wrong with it.

    ``torch.save`` writes a zip whose every member carries a CRC-32: ``deep`` checks them all (it reads
    the whole file; about 0.3 s for 20 MB), so flipped bytes inside a tensor are found before the file
    is used; ``deep=False`` only checks the archive's index. Every weight file the project loads from a
    user path goes through this (checkpoints, exported CLIP weights, continual-learning task states).
    """
    import zipfile

    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "archive without data.pkl"
            bad = z.testzip() if deep else None
    except FileNotFoundError:
        return "does not exist"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a complete torch.save archive: {exc}"
    if bad is not None:
        return f"damaged: member {bad} fails its CRC-32 check"
    return None


def load_torch_file(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` of a file a user named, after :func:`torch_file_problem`: a
    missing, torn, damaged or untrusted file is a :class:`models.errors.UserError` naming it (one line)."""
    import torch

    from models.errors import UserError

    problem = torch_file_problem(path)
    if problem is not None:
        raise UserError(f"{what} {os.fspath(path)}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an untrusted pickle or a foreign file
        import pickle

        if isinstance(exc, pickle.UnpicklingError):
            detail = f"refusing to load it: {unpickling_refusal(exc)}; only load files you trust"
        else:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise UserError(f"{what} {os.fspath(path)}: {detail}") from None


CHECKSUMS = "checksums.sha256"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str | os.PathLike) -> Path:
    """``<folder>/checksums.sha256`` (``sha256sum`` format) over every file of a saved model folder, written
    atomically after them: weight formats without their own checksums (safetensors, HF folders) are then
    verified before use (:func:`verify_checksums`); ``sha256sum -c checksums.sha256`` checks it by hand."""
    folder = Path(folder)
    lines = [f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".")]
    return Path(atomic_write_text(folder / CHECKSUMS, "\n".join(lines) + "\n"))


def verify_checksums(folder: str | os.PathLike) -> None:
    """Check a folder against its ``checksums.sha256`` (nothing to check when it has none); a missing or
    changed file is a :class:`models.errors.UserError` naming it."""
    from models.errors import UserError

    folder = Path(folder)
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        return
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(None, 1)
        name = name.strip().lstrip("*")
        p = folder / name
        if not p.is_file():
            raise UserError(f"{p}: missing from the saved model folder {folder} (listed in {CHECKSUMS}); save it again")
        if file_sha256(p) != digest:
            raise UserError(f"{p}: damaged (its SHA-256 differs from {CHECKSUMS}); save the model again or restore "
                            "the file")


def unpickling_refusal(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: ``it pickles objects outside the
    allowlist (GLOBAL pkg.Class)``, from its multi-paragraph ``UnpicklingError``."""
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
    what = found.group(1) if found else " ".join(str(exc).split())[:160]
    return f"it pickles objects outside the allowlist ({what})"
