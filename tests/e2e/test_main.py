"""The command line: bad input ends in one clear line naming the problem, not a traceback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import tiny_main_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(tmp_path, *overrides):
  cmd = [
    sys.executable,
    "main.py",
    "--config=configs/default.py",
    f"--workdir={tmp_path / 'run'}",
    *overrides,
  ]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.train.stepz=5", "stepz"),
    ("--config.grad.method=pcgradd", "config.grad.method: unknown multi-task gradient method"),
    ("--config.train.seqs_per_task=7", "config.train.seqs_per_task"),
    ("--config.data_dir=/no/such/dir", "/no/such/dir/ids-sst-train.csv"),
    ("--config.model.path=/no/such/model", "model directory '/no/such/model' does not exist"),
    ("--config.train.steps=abc", "error: flag --config.train.steps=abc: invalid literal"),
    (
      "--config.grad.kwargs.cc=0.2",
      "config.grad.kwargs: sum_tasks() got an unexpected keyword argument 'cc'",
    ),
  ],
)
def test_bad_input_gives_one_clear_line(tmp_path, override, expected):
  out = run_main(tmp_path, override)
  assert out.returncode != 0
  assert expected in out.stderr
  assert "Traceback" not in out.stderr


def test_a_bad_task_declaration_gives_one_clear_line(tmp_path):
  """A task declared twice in a config file (defaults.add_task), and a bad key of a declared
  task on the command line: one `error:` line naming the task and the key each."""
  config = tmp_path / "dup.py"
  config.write_text(
    "from mtl_jax.config.defaults import add_task, get_config as base\n"
    "def get_config():\n"
    "  c = base()\n"
    "  add_task(c, 'sst', files={'train': 'a', 'dev': 'b'}, sentence_columns=('s',),\n"
    "           label_column='l', label='binary')\n"
    "  return c\n"
  )
  main = lambda *args: subprocess.run(
    [sys.executable, "main.py", f"--workdir={tmp_path / 'run'}", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = main(f"--config={config}")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "error: config.tasks.sst: declared twice" in out.stderr
  out = main("--config=configs/four_tasks.py", "--config.tasks.cfimdb.label=ordinal")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "error: config.tasks.cfimdb.label: 'ordinal' is not one of" in out.stderr


def _logged_steps(workdir) -> list[int]:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def _terminate_after(args: list[str], workdir, n_steps: int, meanwhile=None) -> str:
  """Starts main.py, sends SIGTERM once `n_steps` more steps are logged (after calling
  `meanwhile(process)`, if given, while it trains on); its stderr."""
  start = len(_logged_steps(workdir))
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while len(_logged_steps(workdir)) < start + n_steps:
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
      time.sleep(0.2)
    if meanwhile is not None:
      meanwhile(proc)
  finally:
    proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]  # 128 + SIGINT's 2: interrupted, cleanly.
  assert "Traceback" not in stderr
  return stderr


def test_sigterm_saves_a_checkpoint_says_where_and_the_same_command_resumes(
  tiny_bert_dir, tmp_path
):
  """A real `kill -TERM` of a training process (as SLURM or a shutdown sends it). While it
  trains, a second trainer on its workdir is refused at once, naming the first (one trainer
  run for both: what they need is a run that trains on until it is stopped)."""
  from mtl_jax.data.files import default_data_dir
  from mtl_jax.runtime.checkpoint import Checkpointer

  if not os.path.isdir(default_data_dir()):
    pytest.skip("no data")
  workdir = tmp_path / "run"
  args = tiny_main_args(
    tiny_bert_dir,
    workdir,
    "--config.train.steps=100000",  # No end in sight: only SIGTERM stops it.
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1000",
  )
  stderr = _terminate_after(args, workdir, 3, meanwhile=lambda first: _refused(args, first))
  saved = Checkpointer(str(workdir), 1, 1).latest_step()
  assert saved is not None and saved >= 3, stderr[-2000:]  # On the signal: not step 1000.
  assert f"saved step {saved} to {workdir}" in stderr
  assert "rerun the same command to resume" in stderr

  _terminate_after(args, workdir, 1)  # The same command continues after the saved step.
  assert _logged_steps(workdir)[:saved] == list(range(1, saved + 1))
  assert _logged_steps(workdir)[saved] == saved + 1


def _refused(args: list[str], first: subprocess.Popen) -> None:
  """The same command again, while `first` trains: refused at start-up with one line
  naming the first, which trains on undisturbed."""
  start = time.time()
  out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert time.time() - start < 60  # Refused at start-up, not after waiting for the first.
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out.stderr[-2000:]
  assert f"is in use by PID {first.pid} on host {socket.gethostname()}" in errors[0]
  assert first.poll() is None  # The first trains on, undisturbed.


# Lines that once reached a user of `main.py` and that they cannot act on: jax's probe of a
# TPU that is not there, optax's note on an empty warmup, orbax's INFO lines per save.
NOISE = (
  "Unable to initialize backend",
  "non-positive `transition_steps`",
  "checkpoint_manager.py",
  "Traceback",
)


def test_a_short_run_prints_no_library_noise(tiny_bert_dir, tmp_path):
  """Two steps on the tiny model (too short for a warmup step), as a user runs them: stderr
  holds this package's lines and the progress bar, nothing from the list above."""
  from mtl_jax.data.files import default_data_dir

  if not os.path.isdir(default_data_dir()):
    pytest.skip("no data")
  args = tiny_main_args(tiny_bert_dir, tmp_path / "run", "--config.train.steps=2")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # Let jax probe.
  out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "final dev metrics" in out.stderr
  for line in out.stderr.splitlines():
    assert not any(n in line for n in NOISE), line
