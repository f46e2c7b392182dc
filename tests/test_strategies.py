"""Strategies: CLIP pre-training in 2 processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo), the
same steps with a non-finite batch skipped identically everywhere; DeepSpeed checkpoints consolidated
to plain weights with one command; strategy names resolve to the CPU test strategy only on CPU; GIFT
refuses DeepSpeed before building anything.

ZeRO-3 runs with ``tests/configs/ds_zero3_partition_all.json`` (``launch/deepspeed/zero3.json`` with the
parameter-persistence threshold at 0): with DeepSpeed's default threshold every parameter of the micro
model is small enough to stay unpartitioned and ZeRO-3 would not be exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from train.core.resilience import checkpoint_problem, read_trace

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/clip_micro.yaml"
STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "zero2": ["--trainer.strategy=deepspeed_stage_2"],  # the stock registry name, as a GPU config says it
    "zero3": ["--trainer.strategy=pytorch_lightning.strategies.DeepSpeedStrategy",  # a JSON config
              f"--trainer.strategy.config={ROOT / 'tests/configs/ds_zero3_partition_all.json'}"],
}
PORTS = {"ddp": 29661, "zero2": 29662, "zero3": 29663}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 4-step, 2-process CLIP micro run per strategy; batch 1 (step 2) is all NaN on every rank."""
    out = {}
    for name, flags in STRATEGIES.items():
        d = tmp_path_factory.mktemp(name)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SYNTHLOOP_TRACE=str(d / "trace.jsonl"),
                   SYNTHLOOP_TEST_NAN_AT_BATCHES="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={PORTS[name]}",
               "-m", "train.cli", "fit", "--config", str(MICRO), "--trainer.devices=2", *flags,
               f"--trainer.default_root_dir={d}/run", f"--trainer.logger.init_args.save_dir={d}/run",
               f"--model.init_args.export_path={d}/clip.pt"]
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
        out[name] = (d, proc)
    return out


def _ok(run):
    d, proc = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d, proc


def _consolidate():
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import consolidate
    finally:
        sys.path.remove(str(ROOT / "launch"))
    return consolidate


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_clip_two_processes_each_strategy(runs, name):
    d, proc = _ok(runs[name])
    trace = {step: loss for (_, step), loss in read_trace(d / "trace.jsonl").items()}
    assert sorted(trace) == [1, 2, 3, 4]
    assert trace[2] != trace[2]  # the NaN batch: skipped (and counted), training went on
    assert all(v == v for s, v in trace.items() if s != 2)
    assert "non-finite loss" in proc.stderr and "step skipped (1 in a row, 1 in all)" in proc.stderr
    assert proc.stdout.count("zero-shot accuracy at step 4") == 1
    assert (d / "clip.pt").exists()
    last = d / "run" / "clip_micro" / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint_problem(last) is None
    assert last.is_dir() == (name != "ddp")  # DeepSpeed writes a sharded checkpoint directory
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")], "temporary checkpoint left behind"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_matches_ddp(runs, name):
    ref_dir, _ = _ok(runs["ddp"])
    d, _ = _ok(runs[name])
    ref = read_trace(ref_dir / "trace.jsonl")
    got = read_trace(d / "trace.jsonl")
    for key, value in ref.items():
        if value == value:
            assert got[key] == pytest.approx(value, rel=1e-5), key
    a, b = _weights(ref_dir / "clip.pt"), _weights(d / "clip.pt")
    assert sorted(a) == sorted(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-4  # summation order differs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2", "zero3", "ddp"])
def test_consolidate_checkpoint_to_plain_weights(runs, name, tmp_path):
    d, _ = _ok(runs[name])
    last = d / "run" / "clip_micro" / "version_0" / "checkpoints" / "last.ckpt"
    _consolidate().main([str(last), "-o", str(tmp_path / "model.pt")])  # python launch/consolidate.py CKPT -o FILE
    export = _weights(d / "clip.pt")
    merged = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert merged["model_name"] == "synthloop-micro-vit32" and merged["global_step"] == 4
    assert sorted(merged["state_dict"]) == sorted(export)
    assert all(torch.equal(merged["state_dict"][k], export[k]) for k in export)
    # open_clip loads it directly
    import open_clip

    import models.clip  # noqa: F401  (registers the micro config)

    open_clip.create_model("synthloop-micro-vit32", pretrained=str(tmp_path / "model.pt"), weights_only=True)


# -- fast checks --------------------------------------------------------------------------------
def test_strategy_names_resolve_to_cpu_variant_only_on_cpu():
    from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry

    from train.core.strategies import CPUDeepSpeedStrategy, resolve_strategy, zero_stage

    for name, stage in (("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3), ("deepspeed_stage_3_offload", 3)):
        s = resolve_strategy(name, "cpu", timeout_s=30)
        assert isinstance(s, CPUDeepSpeedStrategy) and zero_stage(s) == stage
        assert s._timeout == timedelta(seconds=30)
        assert resolve_strategy(name, "gpu") == name  # GPU: Lightning's stock strategy, unchanged
        assert f"{name}_cpu" in StrategyRegistry
    assert resolve_strategy("ddp", "cpu") == "ddp"
    ddp = resolve_strategy("ddp", "gpu", timeout_s=12)
    assert isinstance(ddp, DDPStrategy) and not isinstance(ddp, DeepSpeedStrategy)
    assert ddp._timeout == timedelta(seconds=12)
    obj = DeepSpeedStrategy(config=str(ROOT / "launch/deepspeed/zero3_offload.json"))
    assert type(resolve_strategy(obj, "cpu")) is CPUDeepSpeedStrategy and zero_stage(obj) == 3


def test_deepspeed_json_configs():
    stages = {"zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}
    for name, stage in stages.items():
        cfg = json.loads((ROOT / "launch/deepspeed" / name).read_text())
        assert cfg["zero_optimization"]["stage"] == stage
        assert "gradient_accumulation_steps" not in cfg  # Lightning sets it from the Trainer
    offload = json.loads((ROOT / "launch/deepspeed/zero3_offload.json").read_text())["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"


def test_gift_refuses_deepspeed_before_building_anything(tmp_path, monkeypatch):
    import train.gift.runner as runner

    monkeypatch.setattr(runner, "create_clip", lambda *a, **k: pytest.fail("model built before the refusal"))
    with pytest.raises(ValueError, match="does not run under DeepSpeed"):
        runner.continual(tasks=["shape"], strategy="deepspeed_stage_2", out_dir=str(tmp_path / "run"))


class TinyHF(pl.LightningModule):
    """A LightningModule around a transformers model (what the VLM recipes look like to consolidate.py)."""

    def __init__(self, vocab: int = 40, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=8, n_embd=hidden, n_layer=1, n_head=2))


def test_consolidate_writes_a_hugging_face_folder(tmp_path):
    consolidate = _consolidate()
    torch.manual_seed(0)
    module = TinyHF()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 3,
                "hyper_parameters": {"_class_path": f"{__name__}.TinyHF", "vocab": 40, "hidden": 16}}, ckpt)
    consolidate.main([str(ckpt), "--hf-dir", str(tmp_path / "hf"), "-o", str(tmp_path / "w.safetensors")])
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    back = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    for k, v in module.model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    flat = load_file(tmp_path / "w.safetensors")
    assert torch.equal(flat["transformer.wte.weight"], module.model.transformer.wte.weight)
