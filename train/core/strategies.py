"""Training strategies by name: DDP and DeepSpeed ZeRO-2/3, on GPUs and (for tests) on CPUs over gloo.

A config selects the strategy with ``trainer.strategy`` (``ddp``, ``deepspeed_stage_2``,
``deepspeed_stage_3``, ``deepspeed_stage_3_offload``, or a ``DeepSpeedStrategy`` with
``config: launch/deepspeed/zero3.json``). :func:`resolve_strategy` turns that choice into the object
the Trainer gets:

* on GPUs the stock Lightning strategies are used unchanged (only the collective timeout is set);
* on CPUs (``accelerator: cpu``, or ``auto`` without CUDA) a DeepSpeed choice becomes
  :class:`CPUDeepSpeedStrategy`, the same strategy with Lightning's "CUDA only" check and its device
  index check removed. DeepSpeed itself runs ZeRO-1/2/3 on CPU over gloo (its CPU accelerator); this
  exists so the CPU tests can run the very configs a GPU run uses. It is **for tests**, not for CPU
  training at scale. It is also registered under ``deepspeed_stage_2_cpu``, ``deepspeed_stage_3_cpu``,
  ``deepspeed_stage_3_offload_cpu`` (``trainer.strategy: deepspeed_stage_2_cpu`` selects it directly).

The collective timeout (how long a rank waits in a collective for a peer that is dead or stuck
before it fails with an error instead of hanging) comes from ``--collective_timeout`` /
``SYNTHLOOP_COLLECTIVE_TIMEOUT_S`` (seconds; default: torch's 30 minutes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, Strategy, StrategyRegistry

TIMEOUT_ENV = "SYNTHLOOP_COLLECTIVE_TIMEOUT_S"

# stock DeepSpeed registry names -> the CPU variant's name
_CPU_NAMES = {
    "deepspeed": "deepspeed_cpu",
    "deepspeed_stage_1": "deepspeed_stage_1_cpu",
    "deepspeed_stage_2": "deepspeed_stage_2_cpu",
    "deepspeed_stage_2_offload": "deepspeed_stage_2_offload_cpu",
    "deepspeed_stage_3": "deepspeed_stage_3_cpu",
    "deepspeed_stage_3_offload": "deepspeed_stage_3_offload_cpu",
}


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy, allowed on CPU (gloo). For CPU tests of GPU configs only.

    Lightning refuses DeepSpeed on anything but CUDA, and checks that device indices equal local ranks
    (CPU devices have no index). DeepSpeed's own CPU accelerator (``DS_ACCELERATOR=cpu``, picked
    automatically without CUDA) runs ZeRO-1/2/3 and the CPU-offload configs over gloo; the first use
    compiles a small communication op with the system C++ compiler (about 25 s, then cached).
    """

    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        # skip DeepSpeedStrategy's CUDA check; keep what the parallel strategies do
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        # the stock method passes the device index (None on CPU) as DeepSpeed's device_rank
        import argparse

        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()), optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False)
        return engine, ds_optimizer


def patch_deepspeed() -> None:
    """The two DeepSpeed fixes every DeepSpeed run here gets (GPU too): :func:`patch_deepspeed_scalar_params`
    and :func:`patch_deepspeed_safe_load`."""
    patch_deepspeed_scalar_params()
    patch_deepspeed_safe_load()


def patch_deepspeed_scalar_params() -> None:
    """Let DeepSpeed handle 0-dim parameters (open_clip's ``logit_scale``).

    DeepSpeed 0.19 broadcasts parameters as ``p.data.view(torch.uint8)``, which torch refuses for a
    0-dim tensor ("self.dim() cannot be 0 to view Float as Byte") on any device, so every open_clip
    model fails in ``deepspeed.initialize`` (``DeepSpeedEngine._broadcast_model``, ZeRO-1/2) or in ZeRO-3's
    parameter conversion (``Init._zero_init_param``). The two methods are replaced by versions that
    broadcast a 1-element view of the same storage; shapes are unchanged. Idempotent; applied whenever a
    DeepSpeed strategy is resolved (on GPU too: the bug is not device-specific).
    """
    from deepspeed import comm as ds_dist
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import Init

    if getattr(DeepSpeedEngine._broadcast_model, "_synthloop_scalar_patch", False):
        return
    original = DeepSpeedEngine._broadcast_model

    def _broadcast_model(self) -> None:
        scalars = [p for p in self.module.parameters() if p.dim() == 0]
        saved = [p.data for p in scalars]
        for p in scalars:
            p.data = p.data.view(1)  # same storage: the broadcast lands in the 0-dim parameter
        try:
            original(self)
        finally:
            for p, data in zip(scalars, saved):
                p.data = data

    def _zero_init_param(self, param) -> None:  # DeepSpeed's body, with a 0-dim-safe byte view
        self._convert_to_deepspeed_param(param)
        group = self.get_partition_dp_group(param)
        src = 0 if ds_dist.get_world_group() == group else ds_dist.get_global_rank(group, 0)
        ds_dist.broadcast(param.data.reshape(-1).view(torch.uint8), src, group)
        param.partition()

    _broadcast_model._synthloop_scalar_patch = True
    DeepSpeedEngine._broadcast_model = _broadcast_model
    if hasattr(Init, "_zero_init_param"):
        Init._zero_init_param = _zero_init_param


def deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed pickles into its checkpoint shards (loss scaler, ZeRO stage enum,
    fragment addresses): the only globals a DeepSpeed checkpoint may contain to load with
    ``weights_only=True``."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def patch_deepspeed_safe_load() -> None:
    """DeepSpeed's ``TorchCheckpointEngine.load`` uses ``torch.load(weights_only=False)``; replace it with
    ``weights_only=True`` plus an allowlist of DeepSpeed's own classes (:func:`deepspeed_safe_globals`), so
    resuming from a DeepSpeed checkpoint cannot execute code from the checkpoint. Idempotent."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if getattr(TorchCheckpointEngine.load, "_synthloop_safe_load", False):
        return

    def load(self, path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise RuntimeError(f"synthloop: cannot load DeepSpeed checkpoint shard {path} with weights_only=True "
                               f"({type(exc).__name__}: {str(exc)[:500]})") from exc

    load._synthloop_safe_load = True
    TorchCheckpointEngine.load = load


def register_cpu_strategies(registry=StrategyRegistry) -> None:
    """Register ``deepspeed*_cpu`` names for :class:`CPUDeepSpeedStrategy` (idempotent)."""
    for stock, cpu in _CPU_NAMES.items():
        if cpu in registry or stock not in registry:
            continue
        registry.register(cpu, CPUDeepSpeedStrategy, description=f"{stock} on CPU over gloo (tests only)",
                          **registry[stock]["init_params"])


register_cpu_strategies()


def collective_timeout(seconds: float | None = None) -> timedelta | None:
    """The collective timeout: ``seconds`` if given, else ``$SYNTHLOOP_COLLECTIVE_TIMEOUT_S``, else None."""
    if seconds is None:
        env = os.environ.get(TIMEOUT_ENV)
        try:
            seconds = float(env) if env else None
        except ValueError:
            seconds = -1.0
        if seconds is not None and not seconds > 0:
            from models.errors import UserError

            raise UserError(f"environment variable {TIMEOUT_ENV}={env!r} is not a number of seconds > 0; set it "
                            "(e.g. 600) or unset it (torch's default, 30 min)")
    return None if seconds is None else timedelta(seconds=float(seconds))


def _on_cpu(accelerator: Any) -> bool:
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in (None, "auto"):
        return not torch.cuda.is_available()
    return "cpu" in str(name).lower()


def is_deepspeed(strategy: Any) -> bool:
    """Whether ``strategy`` (a name or an object) is a DeepSpeed strategy."""
    if isinstance(strategy, str):
        return strategy.startswith("deepspeed")
    return isinstance(strategy, DeepSpeedStrategy)


def _takes_timeout(name: str) -> bool:
    if name not in StrategyRegistry:
        return False
    return name.startswith("deepspeed") or (name.startswith("ddp") and not any(
        k in name for k in ("spawn", "fork", "notebook")))


def resolve_strategy(strategy: str | Strategy, accelerator: Any = "auto",
                     timeout_s: float | None = None) -> str | Strategy:
    """The Trainer's ``strategy`` for a configured choice: CPU DeepSpeed variant on CPU, timeout applied.

    Args:
        strategy: what the config says (a registry name or a Strategy object).
        accelerator: the Trainer's accelerator (``cpu``, ``gpu``, ``auto``, or an Accelerator).
        timeout_s: collective timeout in seconds (None: ``$SYNTHLOOP_COLLECTIVE_TIMEOUT_S``, else
            Lightning's default).
    """
    timeout = collective_timeout(timeout_s)
    on_cpu = _on_cpu(accelerator)
    if is_deepspeed(strategy):
        patch_deepspeed()
    if isinstance(strategy, str):
        name = _CPU_NAMES.get(strategy, strategy) if on_cpu else strategy
        if timeout is None or not _takes_timeout(name):
            return name
        entry = StrategyRegistry[name]
        return entry["strategy"](**{**entry["init_params"], "timeout": timeout})
    if isinstance(strategy, DeepSpeedStrategy) and on_cpu and not isinstance(strategy, CPUDeepSpeedStrategy):
        strategy.__class__ = CPUDeepSpeedStrategy  # same state; only the CPU checks differ
    if timeout is not None and isinstance(strategy, (DDPStrategy, DeepSpeedStrategy)):
        strategy._timeout = timeout
    return strategy


# -- what a LightningModule needs to know about DeepSpeed ------------------------------------------
def zero_stage(strategy: Any) -> int:
    """The ZeRO stage of a (resolved) strategy object; 0 when it is not DeepSpeed."""
    if not isinstance(strategy, DeepSpeedStrategy) or not isinstance(strategy.config, dict):
        return 0
    return int((strategy.config.get("zero_optimization") or {}).get("stage", 0))


def _module_stage(module: Any) -> int:
    trainer = getattr(module, "_trainer", None)
    return zero_stage(trainer.strategy) if trainer is not None else 0


@contextmanager
def full_params(module: torch.nn.Module, owner: Any):
    """Under ZeRO-3, gather ``module``'s partitioned parameters for code that uses them outside a
    ``forward`` (open_clip's ``encode_text`` reads ``positional_embedding`` directly, exports read
    ``state_dict``); read-only, collective (every rank must enter). A no-op otherwise.

    ``owner`` is the LightningModule (its trainer's strategy decides)."""
    if _module_stage(owner) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def hf_zero3_config(owner: Any) -> Any:
    """Under ZeRO-3, tell ``transformers`` that DeepSpeed ZeRO-3 is on, before a model is loaded in
    ``configure_model``; returns the object to keep alive (None otherwise).

    Lightning builds the model inside ``deepspeed.zero.Init``, so every parameter is partitioned as soon as
    it is created. ``from_pretrained`` only handles partitioned parameters (weight initialisation under
    ``GatheredParameters``, the checkpoint loaded into the shards) when ``is_deepspeed_zero3_enabled()``,
    which reads a weak reference to an ``HfDeepSpeedConfig``. Without it, loading Qwen2.5-VL failed at once
    (``IndexError`` zeroing the padding row of a partitioned, empty embedding weight). The caller keeps the
    returned object as long as the model is used (transformers also consults it later).
    """
    if _module_stage(owner) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(owner._trainer.strategy.config)


def clamp_param_(param: torch.nn.Parameter, low: float, high: float, owner: Any) -> None:
    """``param.clamp_(low, high)`` that also holds under DeepSpeed, where the optimizer keeps its own fp32
    master copy (clamping the model's copy would be undone at the next step). Collective under DeepSpeed."""
    if _module_stage(owner) == 0:
        with torch.no_grad():
            param.clamp_(low, high)
        return
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    value = safe_get_full_fp32_param(param)
    if value is not None and (bool((value < low).any()) or bool((value > high).any())):
        safe_set_full_fp32_param(param, value.clamp(low, high))

