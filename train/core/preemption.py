"""Pre-emption for SLURM (and any launcher that sends a signal): signal -> checkpoint -> requeue -> resume.

:class:`PreemptionCheckpoint` replaces Lightning's own SLURM auto-requeue handler. Lightning's handler
saves the checkpoint *inside the signal handler*, at whatever point of the step each rank happens to
be; with DDP that is unsafe (the DataModule's ``state_dict`` and ``save_checkpoint`` itself are
collectives, and the ranks are interrupted at different places), and even on one rank a checkpoint
taken between "batch fetched" and "optimizer step" resumes one batch later than an uninterrupted
run would. Here the handler only sets a flag; at the next training-step boundary the ranks agree on
the flag (one ``all_reduce``), save ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` together
(written to a temporary name and renamed, so an interrupted save never replaces a good file), then
rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` and every rank exits. The restarted job resumes from
the checkpoint :func:`train.core.checkpoints.latest_checkpoint` picks under the run directory (the one
resume rule of every command: highest ``global_step`` among complete checkpoints, then the newest;
``launch/slurm.sbatch`` passes it as ``--ckpt_path``; without it Lightning's own SLURM resume also picks
the ``hpc_ckpt_*``).

    python -m train.core.preemption latest RUN_DIR    # prints "<checkpoint>\t<global_step>" (nothing if none)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

# the one resume rule (highest global_step among complete checkpoints, then newest): re-exported for the CLI
from train.core.checkpoints import checkpoint_step, commit, latest_checkpoint  # noqa: F401

log = logging.getLogger(__name__)

EXIT_NOT_REQUEUED = 75  # EX_TEMPFAIL: stopped with a checkpoint, run the same command again to resume


class Preempted(SystemExit):
    """Raised on every rank after the pre-emption checkpoint was written (and the job requeued)."""


def _next_hpc_path(dirpath: Path) -> Path:
    """``hpc_ckpt_<max n + 1>.ckpt``: Lightning's naming, so its own SLURM auto-resume finds it too."""
    numbers = []
    for p in dirpath.glob("hpc_ckpt_*.ckpt"):
        suffix = p.name[len("hpc_ckpt_"):-len(".ckpt")]
        if suffix.isdigit():
            numbers.append(int(suffix))
    return dirpath / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class PreemptionCheckpoint(pl.Callback):
    """On ``signal_name``: checkpoint at the next step boundary on all ranks, requeue the SLURM job, exit.

    Args:
        signal_name: the signal that announces pre-emption (SLURM: ``#SBATCH --signal=USR1@90``, or
            ``scancel --signal=USR1 JOBID``).
        requeue: run ``scontrol requeue $SLURM_JOB_ID`` after the checkpoint (only under SLURM).
        check_every_n_steps: how often the ranks agree on the flag (one tiny ``all_reduce``).
        dirpath: where ``hpc_ckpt_<n>.ckpt`` goes (default ``trainer.default_root_dir``, where
            Lightning's SLURM auto-resume looks).

    The process exits with code 0 when the job was requeued, 75 when it was not (no SLURM,
    ``requeue=False`` or ``scontrol`` failed): run the same command again to resume. A signal that
    arrives during the last step is ignored (the run is about to finish anyway).
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, check_every_n_steps: int = 1,
                 dirpath: str | None = None) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"PreemptionCheckpoint: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.signum = signal.Signals[signal_name if signal_name.startswith("SIG") else "SIG" + signal_name]
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.dirpath = dirpath
        self.received = False
        self._previous: Any = None
        self._installed = False
        self._last_step: int | None = None

    # -- the handler only sets a flag (it also runs in forked DataLoader workers, where that is harmless)
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Installed before Trainer._run registers Lightning's handlers: Lightning leaves an existing
        # handler of the requeue signal alone, so its own (unsafe) SLURM handler is never installed.
        if stage != "fit" or self._installed or threading.current_thread() is not threading.main_thread():
            return
        if trainer.is_global_zero:  # a pre-emption checkpoint whose write was killed: never resumed from
            from models.io import remove_orphans

            remove_orphans(self.dirpath or trainer.default_root_dir)
        self._previous = signal.signal(self.signum, self._on_signal)
        self._installed = True

    def _restore(self, trainer: pl.Trainer) -> None:
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        previous = self._previous if self._previous is not None else signal.SIG_DFL
        signal.signal(self.signum, previous)
        # Lightning's signal connector restores the handlers it found at fit start (ours among them)
        # when fit ends; make it restore the one from before us instead
        saved = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
        if isinstance(saved, dict) and self.signum in saved:
            saved[self.signum] = previous
        self._installed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore(trainer)  # Lightning skips the teardown hooks when fit ends with an exception

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # 0, or the step a resumed run starts from

    def _agreed(self, trainer: pl.Trainer) -> bool:
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=trainer.strategy.root_device)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step in this batch, not a boundary
            return
        self._last_step = step
        if step % self.check_every_n_steps != 0 or not self._agreed(trainer):
            return
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            log.info("pre-emption signal during the last step (%d): finishing instead", trainer.global_step)
            self.received = False
            return
        self.preempt(trainer)

    def preempt(self, trainer: pl.Trainer) -> None:
        """Checkpoint on all ranks, requeue (rank 0), raise :class:`Preempted` everywhere."""
        dirpath = Path(self.dirpath or trainer.default_root_dir)
        path = None
        if trainer.is_global_zero:
            dirpath.mkdir(parents=True, exist_ok=True)
            path = str(_next_hpc_path(dirpath))
        path = Path(trainer.strategy.broadcast(path, src=0))
        # hidden, and without "hpc_ckpt_" in the name: Lightning's hpc_ckpt_* scan must not count it
        partial = path.with_name(f".{path.stem.replace('hpc_ckpt_', 'hpc-ckpt-')}.partial")
        for logger in trainer.loggers:
            logger.finalize("preempted")  # flush what was logged so far
        trainer.save_checkpoint(partial)  # collective; rank 0 writes; ends with a barrier
        if trainer.is_global_zero:
            commit(partial, path)  # atomic rename + directory fsync: a crash leaves the previous checkpoints
            log.info("pre-emption: saved %s at step %d", path, trainer.global_step)
        trainer.strategy.barrier("preemption-checkpoint")
        # From here on SLURM's SIGTERM (sent by the requeue) may end the process: nothing is left to save.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        job = _slurm_job_id()
        requeued = False
        if trainer.is_global_zero and self.requeue and job is not None:
            try:
                rc = subprocess.call(["scontrol", "requeue", job])
            except FileNotFoundError:
                rc = 127
            requeued = rc == 0
            if requeued:
                log.info("pre-emption: requeued SLURM job %s; it resumes from %s", job, path)
            else:
                log.warning("pre-emption: `scontrol requeue %s` failed (exit %d); resume by submitting the same "
                            "job again", job, rc)
        elif trainer.is_global_zero:
            log.info("pre-emption: not requeued (%s); run the same command again to resume from %s",
                     "requeue=False" if not self.requeue else "not a SLURM job", path)
        requeued = bool(trainer.strategy.broadcast(requeued, src=0))
        raise Preempted(0 if requeued else EXIT_NOT_REQUEUED)


#: Exit code of a run stopped by SIGTERM (128 + 15, what a shell reports for a process the signal killed):
#: a checkpoint of the last finished step was written; ``--resume auto`` (or the SLURM requeue) continues.
EXIT_SIGTERM = 143


class SignalCheckpoint(pl.Callback):
    """SIGTERM mid-run: checkpoint the last finished step, then exit with :data:`EXIT_SIGTERM`, never 0.

    Lightning catches SIGTERM itself: every rank stops at the next step boundary and raises
    ``SIGTERMException`` (a ``SystemExit`` with code 0, so a job chain would read an unfinished run as a
    success, with no checkpoint of the steps since the last periodic one). This callback, which every
    ``synthloop`` run gets (:func:`train.core.resilience.default_callbacks`), writes
    ``<checkpoint dir>/sigterm-step<N>.ckpt`` on all ranks together (atomically, like every checkpoint;
    the resume rule picks it when it is the furthest along) and the ``synthloop`` command exits 143.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _flag_only_sigterm(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException) or isinstance(exception, Preempted):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        cb = trainer.checkpoint_callback
        dirpath = Path(getattr(cb, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints")
        path = dirpath / f"sigterm-step{trainer.global_step}.ckpt"
        if trainer.is_global_zero:
            dirpath.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(partial)  # collective; ends with a barrier
        if trainer.is_global_zero:
            commit(partial, path)
            log.warning("SIGTERM: saved %s at step %d; exiting with %d (resume: the same command with "
                        "--resume auto)", path, trainer.global_step, EXIT_SIGTERM)
        trainer.strategy.barrier("sigterm-checkpoint")


def _flag_only_sigterm(trainer: pl.Trainer) -> None:
    """Make Lightning's SIGTERM handler only set its flag (and pass the signal to processes it spawned).

    Lightning 2.6's handler also calls ``dist.broadcast`` *inside the signal handler*. Under SLURM or
    torchrun every rank gets the signal, each at a different point of its step, so those broadcasts pair
    with the step's own collectives (an ``all_gather`` on one rank, the extra broadcast on another): the
    ranks deadlock until the scheduler kills them, with no checkpoint (seen under a real SLURM:
    ``scancel --signal=TERM`` ended a 2-task job in SIGKILL after KillWait).

    With several ranks the flag must not be Lightning's own ``received_sigterm`` either: besides the
    broadcast of rank 0's flag at the start of every step, Lightning checks the *local* flag at the end of
    a step (``_TrainingEpochLoop.on_advance_end``) and of an epoch. A rank whose signal arrived during step
    k stopped after it, alone, and entered the checkpoint's collectives while the others were already in
    step k+1's broadcast: a deadlock (seen in CI under the real SLURM test). So the handler sets a pending
    flag, and the step-start broadcast (replaced on this trainer's epoch loop) turns rank 0's pending flag
    into ``received_sigterm`` on every rank at once, then stops them all at that boundary. With one rank
    the handler sets ``received_sigterm`` itself.
    """
    from pytorch_lightning.trainer.connectors.signal_connector import _HandlersCompose

    connector = getattr(trainer, "_signal_connector", None)
    composed = signal.getsignal(signal.SIGTERM)
    if connector is None or not isinstance(composed, _HandlersCompose):
        return

    state = {"pending": False}

    def flag(signum: int, frame: Any) -> None:
        if not state["pending"]:
            launcher = trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)
        state["pending"] = True
        if trainer.world_size == 1:
            connector.received_sigterm = True  # one rank: Lightning's local checks stop it

    def synced_stop() -> None:
        """At a step boundary, on every rank: stop together if rank 0 has a pending SIGTERM."""
        import torch
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        decision = torch.tensor([1 if state["pending"] else 0], device=trainer.strategy.root_device)
        torch.distributed.broadcast(decision, src=0)
        if int(decision.item()) == 1:
            connector.received_sigterm = True
            torch.distributed.barrier()
            raise SIGTERMException()

    notifier = getattr(connector, "_sigterm_notifier_fn", None)
    composed.signal_handlers = [flag if h == notifier else h for h in composed.signal_handlers]
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = synced_stop  # called at each step start, ranks > 1


def _slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "latest":
        print("usage: python -m train.core.preemption latest RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    found = latest_checkpoint(argv[1])
    if found is not None:
        print(f"{found[0]}\t{found[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
