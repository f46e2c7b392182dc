"""Callbacks every online recipe uses: data-stall measurement, stream counters, a sample preview."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class DataMonitor(pl.Callback):
    """Measures how long the trainer waits for data and logs the stream's counters.

    ``data/wait_s`` is the time from the end of one training step to the start of the next (fetching
    the batch from the DataLoader, plus Lightning's own bookkeeping), ``data/step_s`` the time from one
    step start to the next, and ``data/wait_frac`` their ratio, accumulated over the run so far after
    ``skip_first`` steps (the first ones include worker start-up). Counters come from the
    DataModule when it has ``counters()``.
    """

    def __init__(self, log_every_n_steps: int = 10, skip_first: int = 5) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.skip_first = skip_first
        self._last_end: float | None = None
        self._last_start: float | None = None
        self._seen = 0
        self.total_wait = 0.0
        self.total_step = 0.0

    @property
    def wait_fraction(self) -> float:
        return self.total_wait / self.total_step if self.total_step > 0 else float("nan")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None and self._last_start is not None:
            self._seen += 1
            if self._seen > self.skip_first:
                self.total_wait += now - self._last_end
                self.total_step += now - self._last_start
        self._last_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last_end = time.perf_counter()
        if trainer.global_step % self.log_every_n_steps != 0:
            return
        metrics: dict[str, float] = {}
        if self.total_step > 0:
            metrics["data/wait_frac"] = self.wait_fraction
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "counters"):
            for k, v in dm.counters().items():
                metrics[f"data/{k}"] = float(v)
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = self._last_start = None  # validation time is not data wait

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.total_step > 0 and trainer.is_global_zero:
            pl_module.print(f"data wait: {100 * self.wait_fraction:.2f}% of step time "
                            f"({self.total_wait:.1f} s of {self.total_step:.1f} s)")


class SampleGridLogger(pl.Callback):
    """Logs a grid of the first training batch's images and their captions to TensorBoard."""

    def __init__(self, n: int = 16, image_key: str = "image", text_key: str = "txt",
                 mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
                 std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)) -> None:
        self.n, self.image_key, self.text_key = n, image_key, text_key
        self.mean, self.std = mean, std
        self._done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._done or not trainer.is_global_zero:
            return
        self._done = True
        logger = trainer.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.image_key not in batch:
            return
        import torchvision

        images = batch[self.image_key][: self.n].detach().float().cpu()
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        grid = torchvision.utils.make_grid((images * std + mean).clamp(0, 1), nrow=4)
        experiment.add_image("samples/images", grid, trainer.global_step)
        texts = batch.get(self.text_key)
        if texts:
            table = "\n".join(f"{i}. {t}" for i, t in enumerate(texts[: self.n]))
            experiment.add_text("samples/captions", table, trainer.global_step)


class ThroughputMonitor(pl.Callback):
    """Steps/s, tokens/s (when the module counts ``tokens_seen``) and peak accelerator memory.

    Timing starts after ``skip_first`` steps (warm-up, allocator growth, DeepSpeed's first-step set-up).
    At the end, rank 0 prints a one-line summary and, with ``out_json``, writes it there (benchmarks read it).
    Peak memory is ``torch.cuda.max_memory_allocated`` on this rank (nothing on CPU).
    """

    def __init__(self, skip_first: int = 3, out_json: str | None = None) -> None:
        self.skip_first, self.out_json = skip_first, out_json
        self._t0: float | None = None
        self._tokens0 = 0
        self._steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._steps += 1
        if self._steps == self.skip_first:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t0 = time.perf_counter()
            self._tokens0 = int(getattr(pl_module, "tokens_seen", 0))
            self._steps0 = self._steps

    def summary(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out: dict[str, Any] = {"steps": self._steps}
        if self._t0 is not None and self._steps > self._steps0:
            dt = time.perf_counter() - self._t0
            out["steps_per_s"] = (self._steps - self._steps0) / dt
            tokens = int(getattr(pl_module, "tokens_seen", 0)) - self._tokens0
            if tokens:
                out["tokens_per_s"] = tokens / dt
        if torch.cuda.is_available():
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        return out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stats = self.summary(pl_module)
        stats["strategy"] = type(trainer.strategy).__name__
        stats["world_size"] = trainer.world_size
        if trainer.is_global_zero:
            pl_module.print("throughput: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in stats.items()))
            if self.out_json:
                import json

                from models.io import atomic_write_text

                atomic_write_text(self.out_json, json.dumps(stats, indent=1))
