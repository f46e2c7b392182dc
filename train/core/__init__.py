"""Machinery every recipe shares (no recipe code here).

* :mod:`.cli` -- ``synthloop fit/validate``: LightningCLI with one-line config errors, ``--resume auto``;
* :mod:`.datamodule` -- :class:`OnlineDataModule`: any generator or WebDataset shards -> batches, exact resume;
* :mod:`.filtering` -- :class:`BatchFilter`, :class:`FilteredLoader`: an online filter stage before the trainer;
* :mod:`.callbacks` -- :class:`DataMonitor`, :class:`SampleGridLogger`, :class:`ThroughputMonitor`;
* :mod:`.strategies` -- DDP / DeepSpeed ZeRO-2/3 by name, CPU (gloo) DeepSpeed for tests;
* :mod:`.preemption` -- SLURM signal -> checkpoint at a step boundary -> requeue -> resume;
* :mod:`.resilience` -- the non-finite-loss guard, fault injection and step traces for tests;
* :mod:`.checkpoints` -- atomic checkpoint IO, validity checks, the one resume-checkpoint selector;
* :mod:`.optim` -- the one AdamW + warm-up/cosine builder;
* :mod:`.vlm_data` -- token-level chat examples for the VLM trainers.
"""

from __future__ import annotations

from train import lazy_exports

_EXPORTS = {
    "DataMonitor": ".callbacks",
    "SampleGridLogger": ".callbacks",
    "ThroughputMonitor": ".callbacks",
    "OnlineDataModule": ".datamodule",
    "collate_samples": ".datamodule",
    "BatchFilter": ".filtering",
    "PreemptionCheckpoint": ".preemption",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
