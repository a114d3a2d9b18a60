"""The command line: bad input ends in one clear line naming the problem, not a traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(tmp_path, *overrides):
  cmd = [sys.executable, "main.py", "--config=configs/default.py",
         f"--workdir={tmp_path / 'run'}", *overrides]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override, expected", [
    ("--config.train.stepz=5", "stepz"),
    ("--config.grad.method=pcgradd", "config.grad.method: unknown multi-task gradient method"),
    ("--config.train.seqs_per_task=7", "config.train.seqs_per_task"),
    ("--config.data_dir=/no/such/dir", "/no/such/dir/ids-sst-train.csv"),
    ("--config.model.path=/no/such/model", "model directory '/no/such/model' does not exist"),
])
def test_bad_input_gives_one_clear_line(tmp_path, override, expected):
  out = run_main(tmp_path, override)
  assert out.returncode != 0
  assert expected in out.stderr
  assert "Traceback" not in out.stderr
