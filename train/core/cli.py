"""``synthloop fit`` / ``synthloop validate``: LightningCLI with synthloop's defaults and one-line config errors.

    synthloop fit --config configs/quickstart.yaml
    synthloop fit --config configs/quickstart.yaml --print_config
    synthloop validate --config configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
    synthloop fit --config ... --resume auto   (after a crash: continue from the valid checkpoint with the
                                               highest global step, see train.core.checkpoints)
    synthloop fit --config ... --trainer.strategy=deepspeed_stage_3 --collective_timeout=600
    synthloop fit --config configs/unicorn/llama3_align.yaml --tiny_random   (the config's code path offline on
                                               tiny random real architectures, see train.core.tiny_random)

The other commands (``continual``, ``datagen``, the toy runners) are listed by ``synthloop --help``
(:mod:`train.cli`); :func:`fit_stage` is how the toy runners chain ``fit`` stages in one process.

Every run writes its fully resolved config (``config.yaml``) next to its logs and checkpoints.
A config mistake (unknown key, wrong type, missing file) ends with one line naming the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from datagen.errors import config_error_line, config_paths
from models.errors import DEBUG_ENV, UserError
from train.core.datamodule import OnlineDataModule


#: Command-line options that choose where or how a run executes, not what it computes: a run given only
#: these still counts as "the config as shipped" (it may write the config's ``publish_path``).
NEUTRAL_FLAGS = ("--config", "--resume", "--run_name", "--collective_timeout", "--ckpt_path", "--trainer.accelerator",
                 "--trainer.devices", "--trainer.num_nodes", "--trainer.strategy", "--trainer.default_root_dir",
                 "--trainer.logger.init_args.save_dir", "--trainer.callbacks", "--trainer.enable_progress_bar",
                 "--print_config")


class SynthloopCLI(LightningCLI):
    """LightningCLI with synthloop's defaults: the run directory holds config, logs and checkpoints."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="name of the run directory under trainer.default_root_dir (default: derived "
                                 "from the config file name)")
        # resilience (train/core/resilience.py, train/core/strategies.py)
        parser.add_argument("--resume", type=str | None, default=None,
                            help="auto: continue from the run directory's newest complete checkpoint if there is "
                                 "one (same command after a crash), else start fresh")
        parser.add_argument("--collective_timeout", type=float | None, default=None,
                            help="seconds a rank waits in a collective for a dead or stuck peer before failing "
                                 "(default: $SYNTHLOOP_COLLECTIVE_TIMEOUT_S, else torch's 30 min)")

    def parse_arguments(self, parser, args) -> None:
        self.argv = list(args) if isinstance(args, (list, tuple)) else []
        super().parse_arguments(parser, args)

    def _guard_publish_path(self, cfg) -> None:
        """A run whose command line changes the config does not write the config's ``publish_path`` (the
        stable file other recipes start from) unless it names ``publish_path`` itself."""
        args = cfg.get("model", {}).get("init_args", None) if hasattr(cfg.get("model", None), "get") else None
        if args is None or not args.get("publish_path"):
            return
        flags = [a.split("=", 1)[0] for a in getattr(self, "argv", []) if a.startswith("--")]
        if any(f.endswith(".publish_path") for f in flags):
            return
        changed = [f for f in flags if not f.startswith(NEUTRAL_FLAGS)]
        if changed:
            import logging

            logging.getLogger(__name__).warning(
                "this run changes the config on the command line (%s): it will not publish %s (its export stays "
                "in its run directory; --model.init_args.publish_path=%s publishes anyway)",
                ", ".join(changed), args["publish_path"], args["publish_path"])
            args["publish_path"] = None

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        self._guard_publish_path(cfg)
        resume = cfg.get("resume")
        if resume not in (None, "auto", "never"):
            raise SystemExit(f"synthloop: error: --resume must be 'auto' or 'never', got {resume!r}")
        if resume == "auto" and self.subcommand == "fit":
            from train.core.resume import apply_resume_auto

            apply_resume_auto(cfg)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` goes through the same checker as ``--resume auto`` (a folder: the resume rule
        picks), and the checkpoint's stored hyperparameters are NOT merged into the config: the config
        and the command line decide (Lightning's default lets the checkpoint silently override them)."""
        sub = self.config.get("subcommand")
        cfg = self.config.get(sub) if sub else None
        if cfg is not None and cfg.get("ckpt_path"):
            from train.core.resume import resolve_ckpt_path

            cfg["ckpt_path"] = resolve_ckpt_path(cfg["ckpt_path"])

    def instantiate_classes(self) -> None:
        """Build the classes; an out-of-range value (refused by a constructor, or by the Trainer) becomes a
        :class:`ConfigError` naming its key (``data.init_args.batch_size: ...``) instead of jsonargparse's
        nested union report."""
        cfg = self.config.get(str(self.subcommand), self.config)
        _check_trainer_values(cfg)
        try:
            super().instantiate_classes()
        except Exception as exc:
            line = config_problem(exc, cfg)
            if line is None:
                raise
            raise ConfigError(line) from exc

    def _check_resume(self) -> None:
        ckpt = self.config.get(str(self.subcommand), self.config).get("ckpt_path")
        if ckpt and self.model is not None:
            from train.core.resume import ConfiguredOptimizer, check_resume_compatible

            if check_resume_compatible(self.model, ckpt) and self.subcommand == "fit" and \
                    "deepspeed" not in type(self.trainer.strategy).__name__.lower():
                self.trainer.callbacks.append(ConfiguredOptimizer())

    def before_fit(self) -> None:
        self._check_resume()

    def before_validate(self) -> None:
        self._check_resume()

    def _instantiate_trainer(self, config: dict, callbacks: list) -> pl.Trainer:
        from train.core.checkpoints import harden_trainer
        from train.core.progress import progress_callbacks
        from train.core.quiet import hygiene_callbacks
        from train.core.resilience import default_callbacks
        from train.core.strategies import resolve_strategy

        cfg = self.config.get(str(self.subcommand), self.config)
        config["strategy"] = resolve_strategy(config.get("strategy", "auto"), config.get("accelerator", "auto"),
                                              cfg.get("collective_timeout"))
        callbacks = list(callbacks) + default_callbacks(list(config.get("callbacks") or []) + list(callbacks))
        configured = list(config.get("callbacks") or []) + callbacks
        extra, config["enable_progress_bar"] = progress_callbacks(configured, config.get("enable_progress_bar"))
        hygiene, config["enable_model_summary"] = hygiene_callbacks(configured, config.get("enable_model_summary"))
        return harden_trainer(super()._instantiate_trainer(config, callbacks + extra + hygiene))


class ConfigError(UserError):
    """A config value refused when the classes are built: ``key.path: what is wrong; what to do``. The
    commands print it as ``synthloop: config error in <config>: <message>`` (exit 2)."""


def _check_trainer_values(cfg) -> None:
    """Trainer values Lightning would accept but that cannot work on an endless stream, refused in one line."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    if trainer is None or not hasattr(trainer, "get"):
        return
    steps = trainer.get("max_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps == 0 or steps < -1):
        raise ConfigError(f"trainer.max_steps: must be > 0 (the number of optimizer steps) or -1 (no limit), got "
                          f"{steps!r}: the stream is endless, so max_steps is what ends a run")
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"trainer.{key}: must be an integer >= 1, got {value!r}")
    value = trainer.get("val_check_interval")
    if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and value <= 0:
        raise ConfigError(f"trainer.val_check_interval: must be > 0 (steps between validations; a float in (0, 1] "
                          f"is a fraction of an epoch), got {value!r}")


def _in_frame(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` was raised under a call of a function called ``name``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == name:
            return True
        tb = tb.tb_next
    return False


def config_problem(exc: BaseException, cfg) -> str | None:
    """One line ``key.path: what`` for a value refused while the config's classes were built, or None when
    ``exc`` is not such a refusal (it keeps its traceback).

    Refusals are Lightning's ``MisconfigurationException`` (and the like) from ``Trainer(...)``, and what
    :func:`datagen.cli.locate_config_error` finds: a :class:`models.errors.UserError` anywhere in the
    exception chain (e.g. under jsonargparse's union report), or a ``ValueError`` / ``TypeError`` /
    ``KeyError`` raised by a config class's ``__init__`` itself; ``Class.arg: ...`` and ``Class: arg ...``
    messages are rewritten to the argument's key (``data.init_args.generator.init_args.n_objects: ...``)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from datagen.cli import locate_config_error

    if isinstance(exc, UserError):
        return None  # raised as such (an environment variable, a file): complete already, not a config key
    if isinstance(exc, (MisconfigurationException, ModuleNotFoundError, ValueError)) and _in_frame(
            exc, "_instantiate_trainer"):  # Trainer(...) refused a value (devices, accelerator, strategy)
        return f"trainer: {' '.join(str(exc).split())}"
    return locate_config_error(exc, cfg, direct=(ValueError, TypeError, KeyError))


def _check_config_files(argv: list[str]) -> None:
    for path in config_paths(argv):
        if not Path(path).is_file():
            raise SystemExit(f"synthloop: error: config file {path!r} does not exist")


def run_cli(argv: list[str] | None = None, **kwargs) -> SynthloopCLI:
    """Run LightningCLI on ``argv`` (a test calls this directly with ``run=False``).

    ``sys.argv`` is reduced to the program name meanwhile: LightningCLI warns whenever both ``args`` and
    command-line arguments are present, even when they are the same list."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        return _construct_cli(saved[1:] if argv is None else list(argv), **kwargs)
    finally:
        sys.argv = saved


def _construct_cli(argv: list[str] | None, **kwargs) -> SynthloopCLI:
    return SynthloopCLI(
        pl.LightningModule,
        OnlineDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # --trainer.max_step is not max_steps
        args=argv,
        # every loader shards itself: training streams by rank (slots), evaluation sets by index
        # (train.clip.zeroshot.eval_loader, UniFilterTrainer.val_dataloader). Lightning's default would wrap an
        # evaluation loader's per-rank sampler in a DistributedSamplerWrapper, splitting each rank's share again:
        # a 2-rank zero-shot evaluation then scored half of the items (some twice)
        trainer_defaults={"use_distributed_sampler": False, **kwargs.pop("trainer_defaults", {})},
        **kwargs,
    )


def fit_stage(config: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
              progress_bar: bool = False) -> float:
    """Run one ``synthloop fit`` stage in this process; return its wall time in seconds.

    The one way the toy runners chain their stages (Unicorn text -> align -> instruct, Vision-Zero
    SFT -> self-play): exactly what ``synthloop fit --config CONFIG OVERRIDES...`` does, so every stage
    can also be run by hand. A failing stage raises; a config mistake raises ``SystemExit`` with one line.
    """
    import time

    argv = ["fit", "--config", os.fspath(config), *([] if progress_bar else ["--trainer.enable_progress_bar=false"]),
            *overrides]
    t0 = time.perf_counter()
    try:
        run_cli(argv)
    except Exception as exc:
        from jsonargparse import ArgumentError

        if isinstance(exc, ConfigError):
            raise SystemExit(f"synthloop: config error in {config}: {exc}") from None
        if isinstance(exc, ArgumentError) or type(exc).__name__ in ("ArgumentError", "NSKeyError"):
            raise SystemExit(f"synthloop: config error in {config}: {config_error_line(exc)}") from None
        raise
    return time.perf_counter() - t0


def lightning_main(argv: list[str]) -> None:
    """``synthloop fit|validate|test|predict ...``: LightningCLI, a config mistake ends in one line."""
    argv = list(argv)
    _check_config_files(argv)
    from train.core import tiny_random

    argv = tiny_random.apply(argv)  # --tiny_random: stand-ins for the config's local weights and data
    try:
        run_cli(argv)
    except Exception as exc:
        from jsonargparse import ArgumentError

        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise  # SYNTHLOOP_DEBUG=1: the whole traceback
        configs = [a for i, a in enumerate(argv) if i > 0 and argv[i - 1] in ("--config", "-c")]
        where = f" in {', '.join(configs)}" if configs else ""
        if isinstance(exc, ConfigError):  # a value refused while the classes were built
            raise SystemExit(f"synthloop: config error{where}: {exc}") from None
        if isinstance(exc, ArgumentError) or type(exc).__name__ in ("ArgumentError", "NSKeyError"):
            raise SystemExit(f"synthloop: config error{where}: {config_error_line(exc)}") from None
        raise
