"""The synthloop command: config mistakes end with one line naming the key; every shipped config parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import write_edited_config

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/clip_micro.yaml"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _write(tmp_path: Path, edit) -> Path:
    return write_edited_config(MICRO, tmp_path, edit)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["trainer"].update(max_stepz=3), "trainer.max_stepz"),
        (lambda c: c["trainer"].update(max_steps="three"), "trainer.max_steps"),
        (lambda c: c["model"]["init_args"].update(lrr=0.1), "'lrr' is not accepted"),
        (lambda c: c["data"]["init_args"].update(batch_size="many"), "data.batch_size"),
        (lambda c: c["data"]["init_args"]["generator"]["init_args"].update(image_sise=32), "'image_sise'"),
    ],
    ids=["unknown-trainer-key", "wrong-type", "unknown-model-arg", "wrong-data-type", "unknown-generator-arg"],
)
def test_config_mistake_is_one_line_naming_the_key(tmp_path, edit, expected):
    bad = _write(tmp_path, edit)
    proc = _run("fit", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("synthloop: config error in ") and str(bad) in last, proc.stderr[-2000:]
    assert expected in last
    assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path):
    proc = _run("fit", "--config", "nope.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "synthloop: error: config file 'nope.yaml' does not exist"


def test_print_config_resolves_defaults(tmp_path):
    proc = _run("fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["class_path"] == "train.clip.CLIPPretrain"  # the short path configs use
    assert cfg["model"]["init_args"]["model_name"] == "synthloop-tiny-rn64"
    assert cfg["data"]["init_args"]["generator"]["class_path"] == "datagen.world.WorldCaptions"
    # defaults not written in the file are resolved too
    assert "betas" in cfg["model"]["init_args"] and "prefetch_factor" in cfg["data"]["init_args"]


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(tmp_path, config):
    proc = _run("fit", "--config", str(ROOT / "configs" / config), "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fit_writes_resolved_config_checkpoint_and_export(tmp_path):
    proc = _run("fit", "--config", str(MICRO), f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "clip_micro" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 4
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list(run.glob("events.out.tfevents.*"))
    # the open_clip export loads back with open_clip itself
    import open_clip

    import models.clip  # noqa: F401  (registers the tiny configs)

    model = open_clip.create_model("synthloop-micro-vit32", pretrained=str(run / "clip_final.pt"))
    assert model is not None
    assert "zero-shot accuracy at step 4" in proc.stdout


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs" / "gift").glob("*.yaml")))
def test_every_continual_config_parses(tmp_path, config):
    proc = _run("continual", "--config", str(ROOT / "configs" / "gift" / config), "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["method"] == "gift" and len(cfg["tasks"]) >= 6


def test_continual_config_mistake_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((ROOT / "configs/gift/toy.yaml").read_text())
    cfg["steps_per_tsk"] = 3
    bad.write_text(yaml.safe_dump(cfg))
    proc = _run("continual", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("synthloop: config error in ") and "steps_per_tsk" in last, proc.stderr[-2000:]


def test_synthloop_help_lists_every_command_with_a_description(tmp_path):
    from train.cli import COMMANDS

    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: synthloop <command>")
    for name, (_, what) in COMMANDS.items():
        assert f"  {name} " in proc.stdout and what in proc.stdout
    for name in ("fit", "validate", "continual", "datagen", "unicorn-toy", "visionzero-toy", "visionzero-eval"):
        assert name in COMMANDS


def test_synthloop_alone_prints_the_command_list_and_fails(tmp_path):
    proc = _run(cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage: synthloop <command>" in proc.stdout and "continual" in proc.stdout


def test_an_unknown_command_is_one_line_with_a_suggestion(tmp_path):
    proc = _run("contnual", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "synthloop: error: unknown command 'contnual' (did you mean 'continual'?); `synthloop --help` lists them")


@pytest.mark.parametrize("command", ["continual", "datagen", "unicorn-toy", "visionzero-toy", "visionzero-eval"])
def test_every_command_has_its_own_help_naming_it(tmp_path, command):
    proc = _run(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"synthloop {command}" in proc.stdout.splitlines()[0], proc.stdout[:500]
