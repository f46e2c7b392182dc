"""Machinery every recipe shares (no recipe code here).

* :mod:`.cli` -- ``synthloop fit/validate``: LightningCLI with one-line config errors, ``--resume auto``;
* :mod:`.datamodule` -- :class:`OnlineDataModule`: any generator or WebDataset shards -> batches, exact resume;
* :mod:`.callbacks` -- :class:`DataMonitor`, :class:`SampleGridLogger`, :class:`ThroughputMonitor`;
* :mod:`.strategies` -- DDP / DeepSpeed ZeRO-2/3 by name, CPU (gloo) DeepSpeed for tests;
* :mod:`.preemption` -- SLURM signal -> checkpoint at a step boundary -> requeue -> resume;
* :mod:`.resilience` -- non-finite-loss guard, atomic checkpoints, the resume-checkpoint selector;
* :mod:`.optim` -- the one AdamW + warm-up/cosine builder;
* :mod:`.vlm_data` -- token-level chat examples for the VLM trainers.
"""

from .callbacks import DataMonitor, SampleGridLogger, ThroughputMonitor
from .datamodule import OnlineDataModule, collate_samples
from .preemption import PreemptionCheckpoint

__all__ = ["DataMonitor", "OnlineDataModule", "PreemptionCheckpoint", "SampleGridLogger", "ThroughputMonitor",
           "collate_samples"]
