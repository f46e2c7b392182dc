"""Bad flags of the toy runners (``synthloop unicorn-toy``, ``visionzero-toy``, ``visionzero-eval``).

Each probe runs the real ``synthloop`` command in a subprocess and asserts the exact outcome: exit code 2,
one usage line naming the option and the bad value, no traceback, and nothing written (every bad value is
refused before any stage starts; a value that would be accepted would start minutes of training).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/visionzero/toy_selfplay.yaml")

PROBES = [
    # (command line after `synthloop`, text the error line must contain)
    (["unicorn-toy", "--text-steps", "-5"], "argument --text-steps: -5 must be >= 1"),
    (["unicorn-toy", "--align-steps", "0"], "argument --align-steps: 0 must be >= 1"),
    (["unicorn-toy", "--instruct-steps", "many"], "argument --instruct-steps: 'many' is not an integer"),
    (["unicorn-toy", "--noise-std", "-0.1"], "argument --noise-std: -0.1 must be a finite number >= 0"),
    (["unicorn-toy", "--noise-std", "nan"], "argument --noise-std: nan must be a finite number >= 0"),
    (["unicorn-toy", "--vqa-images", "0"], "argument --vqa-images: 0 must be >= 1"),
    (["unicorn-toy", "--n-objects", "3", "1"], "--n-objects: [3, 1] is not an ordered range"),
    (["unicorn-toy", "--n-objects", "1", "99"], "--n-objects: [1, 99] is outside 0.."),
    (["unicorn-toy", "--variants", "mean-shift"], "--variants: invalid choice: 'mean-shift'"),
    (["unicorn-toy", "--clip", "missing/clip.pt"], "--clip missing/clip.pt: no such file"),
    (["unicorn-toy", "--text-step", "5"], "unrecognized arguments: --text-step"),
    (["visionzero-toy", "--games", "0"], "argument --games: 0 must be >= 1"),
    (["visionzero-toy", "--sft-config", "configs/visionzero/nope.yaml"], "--sft-config configs/visionzero/nope.yaml: no such file"),
    (["visionzero-toy", "--selfplay-config", "nope.yaml"], "--selfplay-config nope.yaml: no such file"),
    (["visionzero-eval", "--games", "-1"], "argument --games: -1 must be >= 1"),
    (["visionzero-eval", "--batch", "0"], "argument --batch: 0 must be >= 1"),
    (["visionzero-eval", "--config", "nope.yaml"], "--config nope.yaml: no such file"),
    (["visionzero-eval", "--config", CONFIG, "--base", "missing/base"], "--base missing/base: no such policy"),
    (["visionzero-eval", "--config", CONFIG, "--base", ".", "--trained", "missing/trained"], "--trained missing/trained: no such policy"),
    (["visionzero-eval", "--config", CONFIG, "--base", ".", "--trained-ckpt", "missing.ckpt"], "--trained-ckpt missing.ckpt: no such policy"),
]


@pytest.mark.parametrize("argv,expected", PROBES, ids=[" ".join(a) for a, _ in PROBES])
def test_a_bad_toy_flag_is_one_usage_line(tmp_path, argv, expected):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SYNTHLOOP_DEBUG", None)
    out = tmp_path / "out"
    extra = ["--out", str(out)] if argv[0] != "visionzero-toy" else ["--out", str(out.relative_to(tmp_path))]
    proc = subprocess.run([sys.executable, "-m", "train.cli", *argv, *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert expected in last, last
    assert not out.exists() and not (ROOT / out.relative_to(tmp_path)).exists()
