"""User mistakes in ``synthloop fit`` and ``synthloop datagen`` end in ONE line naming the key, file or
variable (exit 2), and a run stopped by a guard ends in one line too (exit 3), never in a traceback.

Every case drives the real command (``python -m train.cli ...``) in a subprocess; the fit mistakes are
refused before training starts, the guard stops run a few micro steps at most.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import write_edited_config

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/clip_micro.yaml"
UNICORN = ROOT / "configs/unicorn/datagen_world.yaml"
SMALL = ["--generator.init_args.image_size", "32", "--maxcount", "2", "--no_progress"]

# a generator whose every sample fails: the stream's consecutive-failure guard stops the run
FAILING_GEN = '''
from datagen.stream import SampleGenerator


class AlwaysFails(SampleGenerator):
    def generate(self, rng, index):
        raise RuntimeError(f"broken source at sample {index}")
'''


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None,
         pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full = {"PYTHONPATH": os.pathsep.join([str(ROOT), *pythonpath]), "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "train.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=full)


def _write(tmp_path: Path, edit) -> Path:
    return write_edited_config(MICRO, tmp_path, edit)


def _one_line(proc: subprocess.CompletedProcess, code: int, expected: str) -> str:
    """The last stderr line, after checking the exit code, the substring and that no traceback was shown."""
    lines = proc.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert expected in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last


def _gen(c: dict) -> dict:
    return c["data"]["init_args"]["generator"]["init_args"]


def _guard(max_consecutive) -> dict:
    return {"class_path": "train.core.resilience.NonFiniteGuard", "init_args": {"max_consecutive": max_consecutive}}


# (id, config edit, extra arguments, environment, expected substring of the one line)
FIT_MISTAKES = [
    ("negative-batch-size", lambda c: c["data"]["init_args"].update(batch_size=-4), [], {},
     "data.init_args.batch_size: must be >= 1, got -4"),
    ("missing-generator", lambda c: c["data"]["init_args"].pop("generator"), [], {},
     "data.init_args.generator: is missing"),
    ("unknown-model-name", lambda c: c["model"]["init_args"].update(model_name="synthloop-huge"), [], {},
     "model.init_args.model_name: unknown CLIP model 'synthloop-huge'; synthloop's tiny ones are"),
    ("max-steps-0", lambda c: c["trainer"].update(max_steps=0), [], {},
     "trainer.max_steps: must be > 0 (the number of optimizer steps) or -1"),
    ("unordered-n-objects", lambda c: _gen(c).update(n_objects=[3, 1]), [], {},
     "data.init_args.generator.init_args.n_objects: [3, 1] is not an ordered range"),
    ("n-objects-out-of-range", lambda c: _gen(c).update(n_objects=[1, 9]), [], {},
     "data.init_args.generator.init_args.n_objects: [1, 9] is outside 0..6"),
    ("image-size", lambda c: _gen(c).update(image_size=8), [], {},
     "data.init_args.generator.init_args.image_size: image size 8 is not supported"),
    ("caption-mode", lambda c: _gen(c).update(caption="long"), [], {},
     "data.init_args.generator.init_args.caption: must be one of"),
    ("count-weights-length", lambda c: _gen(c).update(count_weights=[1, 2]), [], {},
     "data.init_args.generator.init_args.count_weights: needs 3 non-negative weights"),
    ("probability", lambda c: _gen(c).update(dense_prob=1.5), [], {},
     "data.init_args.generator.init_args.dense_prob: 1.5 is not a probability"),
    ("negative-lr", lambda c: c["model"]["init_args"].update(lr=-1.0), [], {},
     "model.init_args.lr: must be a number > 0"),
    ("unknown-eval-family", lambda c: c["model"]["init_args"].update(eval_families=["shapes"]), [], {},
     "model.init_args.eval_families: unknown task families ['shapes']"),
    ("missing-pretrained", lambda c: c["model"]["init_args"].update(pretrained="/nonexistent/clip.pt"), [], {},
     "model.init_args.pretrained: pretrained CLIP checkpoint '/nonexistent/clip.pt' does not exist"),
    ("val-check-interval-0", lambda c: c["trainer"].update(val_check_interval=0), [], {},
     "trainer.val_check_interval: must be > 0"),
    ("devices-0", lambda c: c["trainer"].update(devices=0), [], {},
     "trainer: `Trainer(devices=0)` value is not a valid"),
    ("nonfinite-guard-negative", lambda c: c["trainer"]["callbacks"].append(_guard(-1)), [], {},
     "trainer.callbacks[3].init_args.max_consecutive: must be an integer >= 0"),
    ("nonfinite-env-not-int", lambda c: None, [], {"SYNTHLOOP_MAX_NONFINITE": "abc"},
     "environment variable SYNTHLOOP_MAX_NONFINITE='abc' is not an integer"),
]


@pytest.mark.parametrize("edit, extra, env, expected", [m[1:] for m in FIT_MISTAKES],
                         ids=[m[0] for m in FIT_MISTAKES])
def test_fit_mistake_is_one_line(tmp_path, edit, extra, env, expected):
    bad = _write(tmp_path, edit)
    proc = _run("fit", "--config", str(bad), f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", *extra, cwd=tmp_path, env=env)
    last = _one_line(proc, 2, expected)
    if "environment variable" not in expected:
        assert last.startswith(f"synthloop: config error in {bad}: "), last
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before training


def _evil(path: Path) -> Path:
    """A checkpoint whose pickle references a class: torch.load(weights_only=True) refuses it."""
    import torch

    torch.save({"state_dict": {}, "global_step": 1, "payload": subprocess.Popen}, path)
    return path


@pytest.mark.parametrize("where", ["ckpt_path", "pretrained"])
def test_untrusted_pickle_is_refused_in_one_line(tmp_path, where):
    evil = _evil(tmp_path / ("evil.ckpt" if where == "ckpt_path" else "evil.pt"))
    arg = f"--ckpt_path={evil}" if where == "ckpt_path" else f"--model.init_args.pretrained={evil}"
    proc = _run("fit", "--config", str(MICRO), f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", arg, cwd=tmp_path)
    last = _one_line(proc, 2, "it pickles objects outside the allowlist (")
    assert str(evil) in last and "only load checkpoints you trust" in last and "refusing to load" in last


def test_nonfinite_stop_is_one_line_exit_3_and_keeps_the_checkpoint(tmp_path):
    # steps 1-2 train (checkpoint at step 2), then every batch is NaN: 2 in a row stop the run
    env = {"SYNTHLOOP_TEST_NAN_AT_BATCHES": ",".join(map(str, range(2, 12))), "SYNTHLOOP_MAX_NONFINITE": "2"}
    proc = _run("fit", "--config", str(MICRO), f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=8", cwd=tmp_path, env=env)
    last = _one_line(proc, 3, "synthloop: run stopped: 2 consecutive training steps had a non-finite loss")
    assert "SYNTHLOOP_MAX_NONFINITE" in last
    from train.core.checkpoints import checkpoint_problem, checkpoint_step

    ckpts = sorted((tmp_path / "clip_micro" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(checkpoint_problem(p) is None for p in ckpts), ckpts
    assert max(checkpoint_step(p) for p in ckpts) == 2


@pytest.mark.parametrize("num_workers", [0, 1], ids=["main-process", "dataloader-worker"])
def test_broken_source_stop_is_one_line_exit_3(tmp_path, num_workers):
    (tmp_path / "failing_gen.py").write_text(FAILING_GEN)

    def edit(c):
        c["data"]["init_args"].update(generator={"class_path": "failing_gen.AlwaysFails"}, num_workers=num_workers,
                                      max_consecutive_failures=5)

    bad = _write(tmp_path, edit)
    proc = _run("fit", "--config", str(bad), f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", cwd=tmp_path, pythonpath=(str(tmp_path),))
    last = _one_line(proc, 3, "synthloop: run stopped: GeneratorStream: 5 samples in a row were invalid in slot 0")
    assert last.endswith("(last at position 4: RuntimeError: broken source at sample 4); the source is broken, "
                         "fix it before training"), last


# -- synthloop datagen ----------------------------------------------------------------------------
def _foreign(tmp_path: Path) -> Path:
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "shard-000000.tar").write_bytes(b"not ours")
    return d


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile"


# (id, arguments (a callable of tmp_path gives paths), expected substring of the one line)
DATAGEN_MISTAKES = [
    ("unknown-kind", lambda t: ["worlds", "--out", str(t / "o"), "--n", "4"],
     "unknown kind 'worlds' (did you mean 'world'?)"),
    ("negative-n", lambda t: ["world", "--out", str(t / "o"), "--n", "-3", *SMALL], "n: must be >= 0, got -3"),
    ("maxcount-0", lambda t: ["world", "--out", str(t / "o"), "--n", "4", "--maxcount", "0"],
     "maxcount: must be >= 1, got 0"),
    ("unordered-n-objects", lambda t: ["world", "--out", str(t / "o"), "--n", "4", *SMALL,
                                       "--generator.init_args.n_objects", "[3, 1]"],
     "generator.init_args.n_objects: [3, 1] is not an ordered range"),
    ("unknown-family", lambda t: ["world", "--out", str(t / "o"), "--n", "4", "--generator.class_path",
                                  "datagen.world.TaskSamples", "--generator.init_args.family", "shapes"],
     "generator.init_args.family: unknown task family 'shapes'"),
    ("unknown-generator-class", lambda t: ["world", "--out", str(t / "o"), "--n", "4", "--generator.class_path",
                                           "datagen.world.WorldCaptionz"],
     "generator: module 'datagen.world' has no attribute 'WorldCaptionz'"),
    ("out-is-a-file", lambda t: ["world", "--out", str(_a_file(t)), "--n", "4", *SMALL],
     "is a file, not a directory; give a directory for the shards"),
    ("out-not-creatable", lambda t: ["world", "--out", str(_a_file(t) / "sub"), "--n", "4", *SMALL],
     "out: cannot create directory"),
    ("foreign-directory", lambda t: ["world", "--out", str(_foreign(t)), "--n", "4", *SMALL],
     "but no datagen_run.json (not written by synthloop datagen); use --overwrite or another --out"),
    ("unicorn-drops-0", lambda t: ["unicorn", "--config", str(UNICORN), "--out", str(t / "u"), "--n", "4",
                                   "--max_consecutive_drops", "0"],
     "max_consecutive_drops: must be >= 1, got 0"),
    ("unicorn-concurrency-0", lambda t: ["unicorn", "--config", str(UNICORN), "--out", str(t / "u"), "--n", "4",
                                         "--concurrency", "0"], "concurrency: must be >= 1, got 0"),
    ("missing-config", lambda t: ["world", "--config", str(t / "nope.yaml")], "does not exist"),
]


@pytest.mark.parametrize("args, expected", [m[1:] for m in DATAGEN_MISTAKES], ids=[m[0] for m in DATAGEN_MISTAKES])
def test_datagen_mistake_is_one_line(tmp_path, args, expected):
    _one_line(_run("datagen", *args(tmp_path), cwd=tmp_path), 2, expected)


@pytest.mark.parametrize("kind", ["unicorn", "world"])
def test_a_refused_datagen_resume_leaves_the_config_file_byte_identical(tmp_path, kind):
    out = tmp_path / "export"
    base = (["unicorn", "--config", str(UNICORN), "--maxcount", "2", "--no_progress"] if kind == "unicorn"
            else ["world", *SMALL])
    first = _run("datagen", *base, "--out", str(out), "--n", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    config = out / "datagen_config.yaml"
    before = config.read_bytes()
    resume = ["--resume"] if kind == "unicorn" else []
    proc = _run("datagen", *base, "--out", str(out), "--n", "4", "--seed", "7", *resume, cwd=tmp_path)
    _one_line(proc, 2, "different: seed (0 in the export, 7 now)")
    assert config.read_bytes() == before
    if kind == "unicorn":  # without --resume the existing export is refused, config untouched too
        proc = _run("datagen", *base, "--out", str(out), "--n", "4", "--seed", "7", cwd=tmp_path)
        _one_line(proc, 2, "pass --resume to continue that export")
        assert config.read_bytes() == before
