"""Checkpoints of every recipe: atomic writes, validity, and the ONE rule that picks the checkpoint to resume.

* **Atomic writes** (:class:`AtomicModelCheckpoint`, :class:`AtomicCheckpointIO`, :func:`commit`): a
  checkpoint file is written with :func:`models.io.atomic_write` (temporary name in its own directory,
  fsync, ``os.replace``, directory fsync); a DeepSpeed checkpoint *directory* is written under
  ``.<name>.partial`` and swapped in with two renames (:func:`commit`). A kill at any moment leaves the
  previous checkpoint or the new one, never a torn one. Loading uses ``torch.load(weights_only=True)`` and
  fails with a message naming the file when it is unreadable.
* **Validity** (:func:`checkpoint_problem`, :func:`checkpoint_step`): a structural check (the zip archive of
  ``torch.save`` is complete; a DeepSpeed directory has its ``latest`` tag and intact shards), the CRC-32
  of every archive member (a file with flipped bytes is damaged, never loaded), and the checkpoint's
  ``global_step`` (read with ``mmap``, so tensors are not loaded). Every load goes through it: ``--resume
  auto``, ``--ckpt_path`` (:func:`train.core.resume.resolve_ckpt_path`), the continual runner, ``launch/consolidate.py``.
* **The resume rule** (:func:`latest_checkpoint`, :func:`find_resume_checkpoint`), used by ``synthloop fit
  --resume auto`` (:func:`apply_resume_auto`), ``synthloop continual`` (each task's ``checkpoints/``) and the
  SLURM requeue (``python -m train.core.preemption latest RUN_DIR``, called by ``launch/slurm.sbatch``):

      Among the complete, valid checkpoints under the given directories (searched recursively), resume
      from the one with the highest ``global_step``; ties go to the newest (mtime), then to the first in
      path order. Candidates are ``*.ckpt`` files and DeepSpeed ``*.ckpt`` directories, plus a
      ``.<name>.ckpt.old`` directory that an interrupted DeepSpeed swap left behind. Hidden names
      (temporaries and ``.partial`` checkpoints being written) are never candidates; a torn, damaged
      (CRC) or unreadable checkpoint is skipped with a warning naming it and why, and the next one by
      the same order is taken.

  The step decides, not the name: ``last.ckpt`` and ``step000040.ckpt`` of the same step are the same
  training state, and a pre-emption checkpoint (``hpc_ckpt_<n>.ckpt``) that is further along wins over
  an older ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from models.io import atomic_write, fsync_dir, remove_orphans, torch_file_problem, unpickling_refusal

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # suffix of a checkpoint being written (hidden: ".<name>.partial")
OLD = ".old"  # suffix of a replaced DeepSpeed checkpoint directory during the swap
# DeepSpeed's rank-0 model-states shard, where Lightning keeps its trainer state: ZeRO-1/2, then ZeRO-3
_DS_CLIENT_SHARDS = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


# -- writing --------------------------------------------------------------------------------------
def partial_path(path: str | os.PathLike) -> str:
    """Where a checkpoint is written before it is renamed to ``path`` (same directory, hidden name)."""
    p = Path(path)
    return str(p.with_name(f".{p.name}{PARTIAL}"))


def _remove(path: str | os.PathLike) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a fully written checkpoint (file or DeepSpeed directory) from ``tmp`` to ``path``."""
    tmp, path = os.fspath(tmp), os.fspath(path)
    if os.path.isdir(tmp) and os.path.lexists(path):
        old = str(Path(path).with_name(f".{Path(path).name}{OLD}"))
        _remove(old)
        os.rename(path, old)  # a crash between the two renames leaves `old`, a complete checkpoint
        os.rename(tmp, path)
        _remove(old)
    else:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`models.io.atomic_write` (temp file beside the target); safe loading.

    Lightning's own save goes through an fsspec transaction whose temp file lives in the system temp
    directory: when that is another filesystem the final move is a copy, which a kill can tear.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        path = os.fspath(path)
        if os.path.isdir(path) and not os.path.islink(path):  # a DeepSpeed checkpoint of that name: swap it out
            tmp = f"{partial_path(path)}-{os.getpid()}"
            try:
                atomic_write(tmp, write)
                commit(tmp, path)
            finally:
                if os.path.isfile(tmp):
                    os.remove(tmp)
        else:
            atomic_write(path, write)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise RuntimeError(f"synthloop: checkpoint {path} is unreadable ({problem}); it is truncated or "
                               "corrupt: delete it or resume from another checkpoint")
        try:
            return torch.load(path, map_location=map_location or "cpu",
                              weights_only=True if weights_only is None else weights_only)
        except Exception as exc:
            import pickle

            from models.errors import UserError

            class CheckpointLoadError(UserError, RuntimeError):
                """One line naming the file (a UserError); a RuntimeError as before for callers catching that."""

            if isinstance(exc, pickle.UnpicklingError):  # weights_only=True refused a pickled object
                raise CheckpointLoadError(
                    f"synthloop: cannot load checkpoint {path}: refusing to load it, {unpickling_refusal(exc)} "
                    "(Weights only load failed); only load checkpoints you trust") from exc
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise CheckpointLoadError(f"synthloop: cannot load checkpoint {path}: {msg}; it is not a readable "
                                      f"Lightning checkpoint: resume from another one") from exc


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose every save (files, DeepSpeed directories) is written aside, then renamed.

    All ranks write into ``.<name>.partial`` (DeepSpeed shards each rank's part there), meet at a
    barrier, and rank 0 renames it into place. Its state key is the stock one, so checkpoints stay
    interchangeable with plain ``ModelCheckpoint`` runs.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:  # what a killed write left: never a resume candidate
            removed = remove_orphans(self.dirpath)
            if removed:
                log.info("removed %d leftover(s) of interrupted checkpoint writes in %s: %s", len(removed),
                         self.dirpath, ", ".join(sorted(removed)))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        from weakref import proxy

        tmp = partial_path(filepath)
        if trainer.is_global_zero:
            _remove(tmp)
        trainer.strategy.barrier("synthloop_ckpt_start")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("synthloop_ckpt_written")
        if trainer.is_global_zero:
            commit(tmp, filepath)
        trainer.strategy.barrier("synthloop_ckpt_committed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def harden_trainer(trainer: pl.Trainer) -> pl.Trainer:
    """Atomic checkpoint writes and safe loading for a constructed Trainer (before ``fit``).

    Plain ``ModelCheckpoint`` callbacks become :class:`AtomicModelCheckpoint` (a subclass that only
    changes how the file is written), and the strategy's default ``TorchCheckpointIO`` becomes
    :class:`AtomicCheckpointIO`.
    """
    for cb in trainer.callbacks:
        if type(cb) is ModelCheckpoint:
            cb.__class__ = AtomicModelCheckpoint
    strategy = trainer.strategy
    io = getattr(strategy, "_checkpoint_io", None)
    if io is None or type(io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


# -- validity -------------------------------------------------------------------------------------
def _zip_problem(path: str, deep: bool = True) -> str | None:
    return torch_file_problem(path, deep)


def checkpoint_problem(path: str | os.PathLike, deep: bool = True) -> str | None:
    """None when ``path`` is a complete, intact checkpoint (file or DeepSpeed directory), else why not.

    Structural checks (zip central directory present, DeepSpeed ``latest`` tag and its shards) and, with
    ``deep`` (the default), the CRC-32 of every member of every ``torch.save`` archive, so a file with
    flipped bytes inside a tensor is refused, not loaded (about 0.3 s for 20 MB; it reads the whole
    file). ``deep=False`` is the cheap structural check only.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return _zip_problem(path, deep)
    if os.path.isdir(path):
        latest = Path(path) / "latest"
        if not latest.is_file():
            return "DeepSpeed checkpoint directory without a `latest` tag"
        tag_dir = Path(path) / latest.read_text().strip()
        shards = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
        if not any("model_states" in s.name for s in shards):
            return f"DeepSpeed checkpoint directory without model states in {tag_dir.name}/"
        for shard in shards:
            problem = _zip_problem(str(shard), deep)
            if problem is not None:
                return f"{shard.name}: {problem}"
        return None
    return "does not exist"


def valid_checkpoint(path: str | os.PathLike) -> bool:
    return checkpoint_problem(path) is None


def _client_shard(path: Path) -> Path:
    """A DeepSpeed checkpoint directory's rank-0 model-states shard (``latest`` names the tag)."""
    latest = path / "latest"
    tag = latest.read_text().strip() if latest.is_file() else "checkpoint"
    for name in _DS_CLIENT_SHARDS:
        if (path / tag / name).is_file():
            return path / tag / name
    return path / tag / _DS_CLIENT_SHARDS[0]


def _read_step(path: Path) -> int:
    if path.is_dir():
        path = _client_shard(path)
    import contextlib

    allow: contextlib.AbstractContextManager = contextlib.nullcontext()
    if "mp_rank_" in path.name:  # DeepSpeed pickles a few of its own classes into its shards
        from train.core.strategies import deepspeed_safe_globals

        allow = torch.serialization.safe_globals(deepspeed_safe_globals())
    with allow:
        try:  # mmap: tensors are not read, so this is cheap even for multi-GB checkpoints
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format checkpoint: read it whole
            state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state["global_step"])


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` of a Lightning checkpoint (file or DeepSpeed directory), or ``None`` (with a
    warning naming it) when it cannot be read (truncated, corrupt, not a Lightning checkpoint)."""
    try:
        return _read_step(Path(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped
        log.warning("skipping checkpoint %s: unreadable (%s: %s)", path, type(exc).__name__, exc)
        return None


# -- the resume rule ------------------------------------------------------------------------------
def _is_swap_leftover(name: str) -> bool:
    return name.startswith(".") and name.endswith(".ckpt" + OLD)


def _candidates(root: Path) -> list[Path]:
    """``*.ckpt`` files and directories under ``root`` (recursively, in path order), plus ``.*.ckpt.old``
    swap leftovers; never hidden names otherwise, never anything inside a checkpoint directory."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        descend = []
        for name in dirnames:
            if (name.endswith(".ckpt") and not name.startswith(".")) or _is_swap_leftover(name):
                out.append(Path(dirpath) / name)  # a DeepSpeed checkpoint: not searched inside
            elif not name.startswith("."):  # hidden folders: temporaries, .partial checkpoints, VCS
                descend.append(name)
        dirnames[:] = descend
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".ckpt") and not f.startswith(".")]
    return sorted(out)


def latest_checkpoint(*dirs: str | os.PathLike) -> tuple[Path, int] | None:
    """The checkpoint to resume from under ``dirs`` and its ``global_step``, by the rule in the module
    docstring (highest step, then newest, among complete, valid ones); ``None`` when there is none."""
    found: list[tuple[int, int, int, Path]] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for p in _candidates(root):
            try:
                problem = checkpoint_problem(p, deep=False)
                step = None if problem is not None else checkpoint_step(p)
                mtime = p.stat().st_mtime_ns
            except FileNotFoundError:  # removed while we looked (a live run's top-k rotation)
                continue
            if problem is not None:
                log.warning("skipping checkpoint %s: %s", p, problem)
                continue
            if step is None:
                continue
            found.append((step, mtime, -len(found), p))
    # best first; only the pick (and what a damaged pick falls back to) pays for the CRC check
    for step, _, _, p in sorted(found, reverse=True):
        try:
            problem = checkpoint_problem(p)
        except FileNotFoundError:
            continue
        if problem is None:
            return p, step
        log.warning("skipping checkpoint %s (step %d): %s; falling back to the next one", p, step, problem)
    return None


def find_resume_checkpoint(*dirs: str | os.PathLike) -> str | None:
    """:func:`latest_checkpoint`'s path as a string (what ``Trainer.fit(ckpt_path=...)`` takes), or None."""
    found = latest_checkpoint(*dirs)
    return None if found is None else str(found[0])
