"""Every weight file a user names is verified before use; bad environment variables are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.errors import UserError
from models.io import CHECKSUMS, load_torch_file, verify_checksums, write_checksums

ROOT = Path(__file__).resolve().parents[1]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_torch_file_refuses_damaged_truncated_and_untrusted_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(100000.0)}, good)
    assert torch.equal(load_torch_file(good)["w"], torch.arange(100000.0))
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"weights .*flipped.pt: damaged: member .* fails its CRC-32 check"):
        load_torch_file(tmp_path / "flipped.pt", "weights")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a complete torch.save archive"):
        load_torch_file(tmp_path / "cut.pt")
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"refusing to load it: it pickles objects outside the allowlist \(posix.system\)"):
        load_torch_file(tmp_path / "evil.pt")


def test_a_saved_model_folder_is_verified_against_its_checksums(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4096)
    (tmp_path / "config.json").write_text("{}")
    write_checksums(tmp_path)
    assert len((tmp_path / CHECKSUMS).read_text().splitlines()) == 2
    verify_checksums(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4095 + b"\x01")
    with pytest.raises(UserError, match=r"model.safetensors: damaged \(its SHA-256 differs"):
        verify_checksums(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing from the saved model folder"):
        verify_checksums(tmp_path)


@pytest.mark.parametrize("var,value,expected", [
    ("SYNTHLOOP_LOG", "loud", "environment variable SYNTHLOOP_LOG='loud' is not a log level"),
    ("SYNTHLOOP_MAX_NONFINITE", "abc", "environment variable SYNTHLOOP_MAX_NONFINITE='abc' is not an integer"),
    ("SYNTHLOOP_COLLECTIVE_TIMEOUT_S", "soon", "environment variable SYNTHLOOP_COLLECTIVE_TIMEOUT_S='soon' is not a "
                                               "number of seconds > 0"),
])
def test_a_bad_environment_variable_is_one_line(tmp_path, var, value, expected):
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", str(ROOT / "tests/configs/clip_micro.yaml"),
                           "--trainer.max_steps=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **{var: value}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expected in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("*.ckpt"))
