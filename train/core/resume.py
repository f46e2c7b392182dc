"""Resuming a run: ``--resume auto`` and ``--ckpt_path`` take the same path.

* :func:`apply_resume_auto` (``synthloop fit --resume auto``): finds the run's checkpoint directories and
  picks by the one resume rule (:func:`train.core.checkpoints.latest_checkpoint`).
* :func:`resolve_ckpt_path` (``--ckpt_path``): the same checker (complete, CRC-intact); a folder is
  searched by the same rule.
* The config decides, not the checkpoint: Lightning's CLI would merge the checkpoint's stored
  hyperparameters over the command line; synthloop does not (:class:`train.core.cli.SynthloopCLI`).
  :func:`check_resume_compatible` refuses a checkpoint that does not fit the configured model (one
  line), and names the hyperparameters that differ; :class:`ConfiguredOptimizer` then makes the
  optimizer follow the config's values (a restored optimizer would otherwise keep the checkpoint's
  learning rate, weight decay and schedule silently).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from models.errors import UserError
from train.core.checkpoints import checkpoint_problem, find_resume_checkpoint, latest_checkpoint

log = logging.getLogger(__name__)


# -- --ckpt_path: the same checker, and the config (not the checkpoint) decides the hyperparameters ----
LIGHTNING_SPECIAL_CKPT = ("last", "best", "hpc")  # names Lightning itself resolves


def resolve_ckpt_path(ckpt_path: str | os.PathLike) -> str:
    """What ``--ckpt_path`` names, checked like every resume: a checkpoint file or DeepSpeed directory
    (refused with one line when missing, torn or damaged), or a folder of checkpoints, where the resume
    rule picks (:func:`latest_checkpoint`). Lightning's own names (``last``, ``best``, ``hpc``,
    ``registry:...``) pass through."""
    text = os.fspath(ckpt_path)
    if text in LIGHTNING_SPECIAL_CKPT or text.startswith("registry"):
        return text
    p = Path(text)
    if not p.exists():
        raise UserError(f"--ckpt_path {text}: no such file or directory; give a checkpoint, a folder of "
                        "checkpoints, or use --resume auto")
    if p.is_dir() and not (p / "latest").is_file():  # a folder of checkpoints, not one DeepSpeed checkpoint
        found = latest_checkpoint(p)
        if found is None:
            raise UserError(f"--ckpt_path {text}: no complete, intact checkpoint in this folder")
        log.info("--ckpt_path %s: resuming from %s (step %d)", text, found[0], found[1])
        return str(found[0])
    problem = checkpoint_problem(p)
    if problem is not None:
        raise UserError(f"--ckpt_path {text}: {problem}; resume from another checkpoint (--ckpt_path FOLDER "
                        "or --resume auto picks the newest intact one)")
    return text


def check_resume_compatible(module: torch.nn.Module, ckpt_path: str | os.PathLike) -> bool:
    """Refuse (one line) a checkpoint whose weights do not fit ``module``'s shapes; log which of the
    config's hyperparameters differ from the ones stored in the checkpoint (the config's are used).

    Only for single-file checkpoints of a module whose parameters already exist (a model built in
    ``configure_model`` or a DeepSpeed directory is checked by Lightning's strict load itself). Returns
    whether any hyperparameter differs (then :class:`ConfiguredOptimizer` applies the config's).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        return False
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if not ours:
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - the loader names the file when it fails for real
        log.debug("shape check skipped for %s: %s", path, exc)
        return False
    theirs = {k: tuple(v.shape) for k, v in (state.get("state_dict") or {}).items() if hasattr(v, "shape")}
    bad = [k for k in ours if k in theirs and ours[k] != theirs[k]]
    if bad:
        k = bad[0]
        raise UserError(f"--ckpt_path {path}: the checkpoint was trained with a different model shape ({len(bad)} "
                        f"tensors differ, e.g. {k}: checkpoint {list(theirs[k])} vs config {list(ours[k])}); resume "
                        "with the config it was trained with (config.yaml in its run directory) or start a new run")
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if theirs and getattr(module, "strict_loading", True) and (missing or unexpected):
        example = f"e.g. {missing[0]} is not in the checkpoint" if missing else f"e.g. {unexpected[0]} is not in the model"
        raise UserError(f"--ckpt_path {path}: the checkpoint does not fit the config's model ({len(missing)} tensors "
                        f"missing, {len(unexpected)} unexpected; {example}); resume with the config it was trained "
                        "with (config.yaml in its run directory) or start a new run")
    stored = state.get("hyper_parameters") or {}
    current = dict(getattr(module, "hparams", {}) or {})
    changed = [f"{k}={current[k]!r} (checkpoint: {stored[k]!r})" for k in sorted(current)
               if k in stored and not k.startswith("_") and _differs(current[k], stored[k])]
    if changed:
        log.info("resuming %s with the config's hyperparameters where they differ from the checkpoint's: %s",
                 path.name, "; ".join(changed))
    return bool(changed)


class ConfiguredOptimizer(pl.Callback):
    """On a resume whose config changed hyperparameters: after Lightning restored the optimizer and LR
    schedule from the checkpoint (which keeps the checkpoint's learning rate, weight decay, betas and
    schedule, whatever the config says), apply the config's: the optimizer's group settings, and for
    ``LambdaLR`` schedules (all of synthloop's, :func:`train.core.optim.warmup_cosine`) the base learning
    rates and the schedule function, evaluated at the restored step. The optimizer's moment estimates
    are kept. Another kind of schedule is refused with one line (start a new run instead).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.core.optimizer import _configure_optimizers
        from torch.optim.lr_scheduler import LambdaLR

        fresh_opts, fresh_scheds, _ = _configure_optimizers(pl_module.configure_optimizers())
        if len(fresh_opts) != len(trainer.optimizers):
            return
        for restored, fresh in zip(trainer.optimizers, fresh_opts):
            for old, new in zip(restored.param_groups, fresh.param_groups):
                old.update({k: v for k, v in new.items() if k not in ("params", "lr", "initial_lr")})
        fresh_scheds = [s["scheduler"] if isinstance(s, dict) else s for s in fresh_scheds]
        for cfg, fresh in zip(trainer.lr_scheduler_configs, fresh_scheds):
            old = cfg.scheduler
            if not (isinstance(old, LambdaLR) and isinstance(fresh, LambdaLR)):
                raise UserError(f"resume: the config changes hyperparameters, but the restored "
                                f"{type(old).__name__} schedule cannot follow them; start a new run instead")
            old.base_lrs = list(fresh.base_lrs)
            old.lr_lambdas = list(fresh.lr_lambdas)
            lrs = old.get_lr()  # LambdaLR: base_lr * lambda(step), at the restored step
            for group, base, lr in zip(old.optimizer.param_groups, old.base_lrs, lrs):
                group["initial_lr"], group["lr"] = base, lr
            old._last_lr = list(lrs)
        if not fresh_scheds:
            for restored, fresh in zip(trainer.optimizers, fresh_opts):
                for old, new in zip(restored.param_groups, fresh.param_groups):
                    old["lr"] = new["lr"]
        log.info("resume: the optimizer follows the config's hyperparameters (learning rate now %s)",
                 ", ".join(f"{g['lr']:.3g}" for g in trainer.optimizers[0].param_groups))


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - tensors and other objects without a plain ==
        return repr(a) != repr(b)


def _cfg_get(ns: Any, key: str, default: Any = None) -> Any:
    cur = ns
    for part in key.split("."):
        if cur is None:
            return default
        cur = cur.get(part, None) if hasattr(cur, "get") else getattr(cur, part, None)
    return default if cur is None else cur


def apply_resume_auto(cfg: Any) -> str | None:
    """``--resume auto`` for ``synthloop fit``: point ``ckpt_path`` at the run's checkpoint to resume from.

    Looks in the ``dirpath`` of configured ``ModelCheckpoint`` callbacks, else in
    ``<logger save_dir>/<name>/version_*/checkpoints`` (newest version with a checkpoint first) or
    ``<default_root_dir>/checkpoints``, and picks by :func:`latest_checkpoint`'s rule; when found under a
    logger version, the logger is pinned to that version so the resumed run keeps writing into the same
    run directory. ``cfg`` is the subcommand's (jsonargparse) config; returns the checkpoint or None (a
    fresh run). An explicit ``ckpt_path`` wins.
    """
    if cfg.get("ckpt_path"):
        return cfg.get("ckpt_path")
    root_dir = Path(_cfg_get(cfg, "trainer.default_root_dir") or os.getcwd())
    dirs = [d for cb in (_cfg_get(cfg, "trainer.callbacks") or [])
            if str(_cfg_get(cb, "class_path", "")).endswith("ModelCheckpoint")
            and (d := _cfg_get(cb, "init_args.dirpath"))]
    if dirs:
        found = find_resume_checkpoint(*dirs)
        if found:
            cfg["ckpt_path"] = found
        return found
    logger = _cfg_get(cfg, "trainer.logger")
    first = logger[0] if isinstance(logger, list) and logger else logger
    if first is False:
        found = find_resume_checkpoint(root_dir / "checkpoints")
    else:
        args = _cfg_get(first, "init_args") if first is not None and first is not True else None
        save_dir = Path(_cfg_get(args, "save_dir") or root_dir)
        name = _cfg_get(args, "name", "lightning_logs") if args is not None else "lightning_logs"
        base = save_dir / name if name else save_dir
        version = _cfg_get(args, "version")
        if version is not None:
            vdirs = [base / (version if isinstance(version, str) else f"version_{version}")]
        else:
            def number(p: Path) -> int:
                tail = p.name.split("_", 1)[-1]
                return int(tail) if tail.isdigit() else -1

            vdirs = sorted(base.glob("version_*"), key=number, reverse=True) if base.is_dir() else []
        found = None
        for vdir in vdirs:
            found = find_resume_checkpoint(vdir / "checkpoints")
            if found:
                if version is None and args is not None:
                    tail = vdir.name.split("_", 1)[-1]
                    args["version"] = int(tail) if tail.isdigit() else vdir.name
                break
    if found:
        cfg["ckpt_path"] = found
        log.info("resuming from %s", found)
    return found
