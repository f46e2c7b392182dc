"""``synthloop continual``: every config mistake and every damaged run-directory file ends in one line
naming the key or file (exit 2, no traceback), before any model or replay set is built, and leaves the
run directory's files untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(tasks=["shape", "digits"], method="gift", model_name="synthloop-micro-vit32", steps_per_task=4,
            batch_size=6, lr=1e-3, warmup_steps=1, replay_size=12, replay_backend={"backend": "world", "image_size": 32},
            eval_per_class=3, checkpoint_every=2, seed=3)

MISTAKES = [  # (edit of BASE, expected substring of the one line)
    ({"tasks": []}, "tasks: the task sequence is empty"),
    ({"tasks": ["shape", "shapes"]}, "tasks[1]: unknown task 'shapes'; world task families:"),
    ({"tasks": ["shape", "shape"]}, "tasks: a task appears twice"),
    ({"tasks": ["shape", "folder:Aircraft"]}, "tasks[1]: 'folder:Aircraft' needs folder_root"),
    ({"tasks": ["shape", "folder:Aircraft"], "folder_root": "nowhere"}, "tasks[1]: 'folder:Aircraft': no folder nowhere/Aircraft"),
    ({"method": "gifts"}, "method: unknown continual method 'gifts'; valid:"),
    ({"task_lr": {"digit": 5e-3}}, "task_lr: names ['digit'], which are not tasks of this sequence"),
    ({"task_lr": {"digits": -1}}, "task_lr.digits: must be > 0"),
    ({"pretrained": "runs/quickstart/missing.pt"}, "pretrained: the starting CLIP checkpoint runs/quickstart/missing.pt does not exist (run `synthloop fit --config configs/quickstart.yaml` first)"),
    ({"logit_scale": "modle"}, "logit_scale: must be a number or 'model'"),
    ({"logit_scale": 0}, "logit_scale: must be > 0"),
    ({"steps_per_task": 0}, "steps_per_task: must be > 0, got 0"),
    ({"batch_size": -4}, "batch_size: must be > 0, got -4"),
    ({"lr": 0}, "lr: must be > 0"),
    ({"replay_size": 0}, "replay_size: must be > 0"),
    ({"warmup_steps": 10}, "warmup_steps: 10 is more than steps_per_task (4)"),
    ({"label_smoothing": 1.0}, "label_smoothing: must be in [0, 1)"),
    ({"ita_targets": "same"}, "ita_targets: must be one of"),
    ({"replay_bn": "eval"}, "replay_bn: must be one of"),
    ({"replay_base": "worlds"}, "replay_base: must be one of"),
    ({"replay_backend": {"backend": "sd"}}, "replay_backend.backend: must be one of"),
    ({"replay_backend": {"backend": "diffusers", "model": "no/such/sd15"}}, "replay_backend.model: the diffusers pipeline folder 'no/such/sd15' does not exist"),
    ({"strategy": "deepspeed_stage_2"}, "strategy: GIFT / continual fine-tuning does not run under DeepSpeed"),
    ({"max_tasks": 0}, "max_tasks: must be > 0"),
]


def _run(tmp_path: Path, capsys, cfg: dict, *extra: str) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["continual", "--config", str(path), "--out_dir", str(tmp_path / "run"),
              "--replay_cache", str(tmp_path / "cache"), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return exc.value.code, err.strip().splitlines()[-1]


@pytest.mark.parametrize("edit,expected", MISTAKES, ids=[f"{i}-{next(iter(e))}" for i, (e, _) in enumerate(MISTAKES)])
def test_a_config_mistake_is_one_line_before_anything_is_built(tmp_path, capsys, monkeypatch, edit, expected):
    import train.gift.runner as runner

    monkeypatch.setattr(runner, "create_clip", lambda *a, **k: pytest.fail("model built before the refusal"))
    code, line = _run(tmp_path, capsys, {**BASE, **edit})
    assert code == 2
    assert line.startswith("synthloop: error: ") and expected in line, line
    assert not (tmp_path / "cache").exists()  # no replay set made


def _finished_task0(out: Path, **state) -> None:
    """The files a run leaves after task 0 (hand-made: the checks come before any of them is used)."""
    (out / "task00-shape").mkdir(parents=True)
    torch.save({"state_dict": {}, "model_name": "synthloop-micro-vit32"}, out / "task00-shape/model.pt")
    (out / "accuracy_matrix.json").write_text(json.dumps({"names": ["shape", "digits"], "matrix": [[50, 10], [None, None]]}))
    (out / "state.json").write_text(json.dumps({"done": 1, "tasks": ["shape", "digits"], "method": "gift", **state}))


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


RUN_DIR_MISTAKES = {
    "another method": (lambda out: None, ["--method", "cd"], "this run directory holds a 'gift' run, not 'cd'"),
    "other settings": (lambda out: None, ["--lr", "0.002"], "was started with other settings (lr: 0.001 there, 0.002 here)"),
    "truncated state.json": (lambda out: (out / "state.json").write_text('{"done": 1, "tas'), [],
                             "state.json: unreadable run state (JSONDecodeError"),
    "damaged model.pt": (lambda out: _damage(out / "task00-shape/model.pt"), [],
                         "task00-shape/model.pt: the weights after task 0 is damaged: member"),
    "truncated model.pt": (lambda out: (out / "task00-shape/model.pt").write_bytes(b"PK\x03\x04"), [],
                           "task00-shape/model.pt: the weights after task 0 is not a complete torch.save archive"),
    "missing model.pt": (lambda out: (out / "task00-shape/model.pt").unlink(), [],
                         "task00-shape/model.pt: the weights after task 0 is missing"),
}


@pytest.mark.parametrize("name", list(RUN_DIR_MISTAKES))
def test_a_foreign_or_damaged_run_directory_is_refused_and_left_untouched(tmp_path, capsys, monkeypatch, name):
    import train.gift.runner as runner

    damage, extra, expected = RUN_DIR_MISTAKES[name]
    out = tmp_path / "run"
    _finished_task0(out, settings={"lr": 1e-3, "seed": 3})
    damage(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(runner, "create_clip", lambda *a, **k: pytest.fail("model built before the refusal"))
    code, line = _run(tmp_path, capsys, BASE, *extra)
    assert code == 2 and expected in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_real_command_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "method": "gifts"}))
    proc = subprocess.run([sys.executable, "-m", "train.cli", "continual", "--config", str(path), "--out_dir",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "synthloop: error: method: unknown continual method 'gifts'; valid: finetune, l2, lwf, ewc, cd, cd_ita, gift"]


def test_an_abbreviated_option_is_refused_by_continual_and_datagen(tmp_path, capsys):
    code, line = _run(tmp_path, capsys, BASE, "--steps_per_tas", "3")
    assert code == 2 and "unrecognized arguments: --steps_per_tas 3" in line
    with pytest.raises(SystemExit) as exc:
        main(["datagen", "world", "--ou", str(tmp_path / "x")])
    assert exc.value.code == 2 and "unrecognized arguments: --ou" in capsys.readouterr().err.strip().splitlines()[-1]
