"""The ``synthloop`` command: one entry point for every runnable thing in the project.

    synthloop --help                                         (the list below)
    synthloop fit --config configs/quickstart.yaml           (any LightningCLI recipe; --print_config, --resume auto)
    synthloop validate --config ... --ckpt_path runs/.../last.ckpt
    synthloop continual --config configs/gift/toy.yaml       (GIFT / continual-learning task sequences)
    synthloop datagen world --help                           (materialise a generator to WebDataset shards)
    synthloop unicorn-toy | visionzero-toy | visionzero-eval ...

This module imports nothing heavy: a subcommand's module is imported only when it runs, and the
argparse-based subcommands parse (and answer ``--help``) before they import torch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from importlib import import_module

from models.errors import DEBUG_ENV, RUN_ABORTED_EXIT, USER_ERROR_EXIT, RunAborted, UserError

EXIT_SIGTERM = 143  # = train.core.preemption.EXIT_SIGTERM (kept here so this module stays light)

# name -> (module:function, one-line description). Functions take argv (without the subcommand).
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("train.core.cli:lightning_main", "train a recipe from a YAML config (LightningCLI; --resume auto)"),
    "validate": ("train.core.cli:lightning_main", "run a recipe's validation on a checkpoint (LightningCLI)"),
    "continual": ("train.gift.runner:main", "a continual-learning task sequence end to end (GIFT and baselines)"),
    "datagen": ("datagen.cli:main", "materialise a generator to WebDataset shards, resumable (world, unicorn)"),
    "unicorn-toy": ("train.unicorn.toy:main", "the Unicorn toy recipe end to end (text LM -> stage A -> stage B -> VQA)"),
    "visionzero-toy": ("train.visionzero.toy:main", "the Vision-Zero toy recipe end to end (SFT -> self-play -> eval)"),
    "visionzero-eval": ("train.visionzero.evaluate:main", "held-out spy games: trained vs base policy tables, phase plot"),
    "export-hf": ("train.unicorn.export:main", "a Unicorn VLM folder -> a Hugging Face folder (AutoModelForImageTextToText)"),
    "score": ("train.unifilter.shards:score_main", "score WebDataset shards with a UniFilter scorer (Parquet per tar, resumable)"),
    "filter": ("train.unifilter.shards:filter_main", "new shards of the samples above a score or in the top fraction"),
}
LIGHTNING = ("fit", "validate", "test", "predict")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: synthloop <command> [--help] ...", "",
             "synthloop: training harness whose data is synthesized online. Commands:", ""]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "Each command has its own --help. Docs: README.md, docs/."]
    return "\n".join(lines)


#: Library messages every synthloop run would print although nothing is wrong in our use (the reason for
#: each is beside it). They are dropped here, once, for every command; everything else is left alone.
EXPECTED_NOISE = (
    # open_clip, for every model built without a checkpoint: the tests and toys build random ones on purpose,
    # and a real run names its checkpoint (a missing one is an error, never a silent random init)
    "No pretrained weights loaded for model",
    # Lightning on any machine where `srun` exists: synthloop's SLURM template runs srun itself
    "The `srun` command is available on your system but is not used",
    # Lightning's advertisement for a hosted logger / checkpoint store
    "💡 Tip: For seamless",
    # a torch-internal deprecation that Lightning 2.6 triggers (no effect on results)
    "`isinstance(treespec, LeafSpec)` is deprecated",
    # Lightning counts every module in eval mode, including frozen teachers and CLIP towers kept in eval
    # on purpose; train.core.quiet.TrainModeCheck warns instead about eval-mode modules that train
    "module(s) in eval mode at the start of training",
    # Lightning, because synthloop installs its own one-line summary (train.core.quiet.CompactModelSummary)
    "Trainer already configured with model summary callbacks",
    # Lightning when it reads a checkpoint it wrote itself; ours are loaded with weights_only=True
    "`weights_only` was not set, defaulting to `False`",
    # Lightning, for modules that evaluate outside its loop (GIFT's runner, Vision-Zero): the DataModule offers
    # a module's own evaluation sets and there are none
    "You passed in a `val_dataloader` but have no `validation_step`",
    # Lightning, for manually optimised modules (GIFT): a checkpoint holds the state after the step, which is
    # what an exact resume needs
    "Using ModelCheckpoint with manual optimization and every_n_train_steps",
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(text in msg for text in EXPECTED_NOISE)


def setup_logging() -> None:
    """synthloop's logging: our own loggers at ``$SYNTHLOOP_LOG`` (INFO), the expected library noise dropped
    (:data:`EXPECTED_NOISE`). Every entry point calls it, the bench scripts that run recipes too."""
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = os.environ.get("SYNTHLOOP_LOG", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"synthloop: error: environment variable SYNTHLOOP_LOG={os.environ['SYNTHLOOP_LOG']!r} is not a log "
              "level; use DEBUG, INFO, WARNING or ERROR (or unset it: INFO)", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)
    for name in ("train", "datagen", "models"):  # our own progress at INFO; libraries stay quiet
        logging.getLogger(name).setLevel(level)
    drop = _DropExpected()
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop)
    for text in EXPECTED_NOISE:
        warnings.filterwarnings("ignore", message=".*" + re.escape(text))


def _user_error_line(exc: BaseException) -> str | None:
    """The one line to print for a user mistake, or None for anything else (which keeps its traceback).

    User mistakes are :class:`models.errors.UserError` and ``SystemExit("message")`` (the project's
    parsers refuse bad values that way); ``SystemExit(int)`` keeps its code untouched. A
    :class:`models.errors.RunAborted` (a guard stopped the run) is one line too, with exit code 3.
    """
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, str) else None
    if not isinstance(exc, (RunAborted, UserError)):
        return None
    text = str(exc)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the message is its last line
        lines = [ln for ln in text.splitlines() if ln.strip()]
        text = lines[-1].split(": ", 1)[-1] if lines else text
    msg = " ".join(text.split())
    if isinstance(exc, RunAborted):
        return f"synthloop: run stopped: {msg}"
    if isinstance(exc, UserError):
        return msg if msg.startswith("synthloop") else f"synthloop: error: {msg}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``synthloop`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        if not argv:
            raise SystemExit(2)
        return
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING:
        target = COMMANDS["fit"][0]
        rest = argv  # LightningCLI parses the subcommand itself
    elif name in COMMANDS:
        target = COMMANDS[name][0]
    else:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"synthloop: error: unknown command {name!r}{hint}; `synthloop --help` lists them", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)
    # subcommand parsers then show `usage: synthloop <command> ...`
    sys.argv = [f"synthloop {name}" if name not in LIGHTNING else "synthloop", *rest]
    setup_logging()
    module, func = target.split(":")
    try:
        import_module(module).__dict__[func](rest)
    except BaseException as exc:  # noqa: BLE001 - user mistakes become one line and exit 2
        if type(exc).__name__ == "SIGTERMException":  # Lightning's SIGTERM stop is a SystemExit(0)
            print("synthloop: stopped by SIGTERM (a checkpoint of the last finished step was written; resume "
                  "with the same command and --resume auto)", file=sys.stderr)
            raise SystemExit(EXIT_SIGTERM) from None
        line = _user_error_line(exc)
        if line is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(line, file=sys.stderr)
        raise SystemExit(RUN_ABORTED_EXIT if isinstance(exc, RunAborted) else USER_ERROR_EXIT) from None
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave no process group behind
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    main()
