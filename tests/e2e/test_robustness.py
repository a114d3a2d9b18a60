"""Bad input and damaged workdirs: each ends in one `error:` line naming the file, key or
workdir, or in a correct recovery (docs/reliability.md). Reproduced through main.py as a
subprocess where a user would meet them, on the tiny random BERT and 40 rows of the data."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import (
  DATA_DIR,
  needs_data,
  read_metrics,
  tiny_config,
  tiny_main_args,
  trainable_restorer,
)

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.data import files
from mtl_jax.models import hf_io
from mtl_jax.runtime import checkpoint, workdir_lock
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.runtime.metrics_log import MetricsLog
from mtl_jax.study import sweep
from mtl_jax.tools import cli, embed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env() -> dict:
  """The subprocesses' environment, read when they start: the session's XLA compilation
  cache (conftest), so the tiny steps and predict functions that other files' runs
  compiled are loaded, not compiled again."""
  return dict(os.environ, JAX_PLATFORMS="cpu")


def config_of_args(model_dir: str, **train_overrides):
  """The config tiny_args trains with (as far as the state's shapes and resuming go)."""
  config = tiny_config(model_dir, **train_overrides)
  config.grad.method = default.get_config().grad.method
  config.train.length_buckets = (32,)
  return config


# For the runs that train to the end and whose test reads no prediction file: writing the
# dev and test predictions took ~2.5 s of CPU of a ~13 s tiny run.
NO_PREDICTION_FILES = "--config.eval.write_predictions=False"


def run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def popen(args: list[str], **kwargs) -> subprocess.Popen:
  return subprocess.Popen(args, cwd=ROOT, env=_env(), text=True, **kwargs)


def one_error_line(out: subprocess.CompletedProcess) -> str:
  """The run failed with one `error:` line and no traceback; returns that line."""
  return one_error_line_of(out.returncode, out.stderr)


def one_error_line_of(status: int, stderr: str) -> str:
  """`one_error_line` of an exit status and stderr (a tool run in process by cli.call)."""
  assert status != 0, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, stderr[-2000:]
  return errors[0]


# --- Config files (main.py and sweep)


@pytest.mark.parametrize(
  "source, expected",
  [
    (None, "config file {path} not found"),
    ("def get_config(:\n  pass\n", "{path}, line 1: syntax error"),
    (
      "from configs import default\n\ndef get_config():\n  return default.get_config(nope)\n",
      "loading config file {path}, line 4 failed: NameError",
    ),
    ("x = 1\n", "config file {path} defines no get_config()"),
    ("def get_config():\n  return {'seed': 0}\n", "get_config() returned dict, not an"),
    ("def get_config():\n  return None\n", "get_config() returned NoneType, not an"),
  ],
)
def test_missing_or_broken_config_file_gives_one_line_with_file_and_line(
  tmp_path, source, expected
):
  path = tmp_path / "cfg.py"
  if source is not None:
    path.write_text(source)
  out = run([sys.executable, "main.py", f"--config={path}", f"--workdir={tmp_path / 'run'}"])
  assert expected.format(path=path) in one_error_line(out)
  assert not (tmp_path / "run").exists()
  if "NameError" not in expected:  # The sweep checks config files the same way.
    with pytest.raises(sweep.SweepError, match=re.escape(expected.format(path=path).split(",")[0])):
      sweep.load_config(str(path), [])


# --- Model directories


def test_truncated_or_garbage_model_weights_give_one_line(tiny_bert_dir, tmp_path):
  half = tmp_path / "half"
  garbage = tmp_path / "garbage"
  for target in (half, garbage):
    os.makedirs(target)
    for name in os.listdir(tiny_bert_dir):
      (target / name).write_bytes(open(os.path.join(tiny_bert_dir, name), "rb").read())
  weights = half / "model.safetensors"
  os.truncate(weights, os.path.getsize(weights) // 2)
  (garbage / "model.safetensors").write_bytes(os.urandom(4096))
  for target in (half, garbage):
    with pytest.raises(hf_io.CheckpointError, match="truncated or damaged"):
      hf_io.load_bert(str(target))
  (garbage / "config.json").write_text('{"model_type": "bert",\n "hidden_size": }')
  with pytest.raises(hf_io.CheckpointError, match=r"config.json, line 2: not valid JSON"):
    hf_io.read_config(str(garbage))

  out = run(tiny_main_args(str(half), tmp_path / "run", "--config.train.steps=1"))
  assert f"{weights} is not a readable safetensors file" in one_error_line(out)


# --- Workdirs


@pytest.mark.parametrize(
  "workdir, expected",
  [
    ("{tmp}/afile/wd", "{tmp}/afile is a file, not a directory"),
    ("/proc/x", "cannot create --workdir=/proc/x"),
  ],
)
def test_unusable_workdir_gives_one_line(tmp_path, workdir, expected):
  (tmp_path / "afile").write_text("")
  workdir = workdir.format(tmp=tmp_path)
  out = run([sys.executable, "main.py", "--config=configs/default.py", f"--workdir={workdir}"])
  assert expected.format(tmp=tmp_path) in one_error_line(out)


def test_workdir_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  fd = workdir_lock.acquire(workdir)
  holder = json.loads(open(os.path.join(workdir, workdir_lock.LOCK_FILE)).read())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  # Another process is refused at once, naming this one.
  probe = (
    "import sys; from mtl_jax.runtime import workdir_lock\n"
    "try:\n  workdir_lock.acquire(sys.argv[1])\nexcept workdir_lock.WorkdirError as e:\n"
    "  print(e)\n"
  )
  out = run([sys.executable, "-c", probe, workdir], timeout=60)
  assert f"is in use by PID {os.getpid()} on host {socket.gethostname()}" in out.stdout
  workdir_lock.release(fd)
  assert open(os.path.join(workdir, workdir_lock.LOCK_FILE)).read() == ""  # Released.

  # A holder killed with -9 leaves its PID behind but not its flock: taken over, with a warning.
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from mtl_jax.runtime import workdir_lock\n"
      "workdir_lock.acquire(sys.argv[1]); print('held', flush=True)\n"
      "time.sleep(600)\n",
      workdir,
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  with caplog.at_level("WARNING"):
    fd = workdir_lock.acquire(workdir)
  workdir_lock.release(fd)
  assert f"PID {holder.pid} on host {socket.gethostname()}" in caplog.text
  assert "no longer holds it" in caplog.text


# A second trainer on a running trainer's workdir is refused at once, naming the first: in
# tests/e2e/test_main.py's SIGTERM test, which has such a trainer running.


# --- Checkpoints


def _truncate_data_files(step_dir: str) -> list[str]:
  """Cuts every OCDBT data file (`.../d/<hash>`) of a checkpoint step to half its size; the
  files orbax reads vary from save to save, so the largest alone may be one it skips."""
  files = [
    os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if os.path.basename(d) == "d"
  ]
  for path in files:
    os.truncate(path, os.path.getsize(path) // 2)
  return files


def _flip_a_byte(step_dir: str) -> str:
  """Flips one byte in the middle of the step's largest OCDBT data file, keeping its
  length (what a bad sector or bit rot leaves); returns its path."""
  files = [
    os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if os.path.basename(d) == "d"
  ]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  with open(path, "r+b") as f:
    f.write(data)
  return path


def predict_quietly(workdir, tmp_path) -> subprocess.CompletedProcess:
  """`python -m mtl_jax.predict` on the workdir; its stderr holds no traceback, no
  "Exception ignored", no tensorstore repr and no library INFO line."""
  text = tmp_path / "pairs.txt"
  text.write_text("a cat\ta dog\n")
  out = run(
    [
      sys.executable,
      "-m",
      "mtl_jax.predict",
      f"--workdir={workdir}",
      "--task=quora",
      f"--input={text}",
      f"--output={tmp_path / 'out.csv'}",
    ]
  )
  for noise in ("Traceback", "Exception ignored", "pybind11", "TensorStore(", "checkpoint_manager"):
    assert noise not in out.stderr, out.stderr[-3000:]
  return out


@needs_data
def test_corrupted_latest_checkpoint_is_set_aside_and_the_run_resumes_from_an_older_one(
  tiny_bert_dir, tmp_path
):
  """A byte of step 4 changed in place (same length): its checksum catches it; predict
  uses step 2 with one warning and no library noise; the same command sets step 4 aside,
  resumes from step 2 and ends bitwise as the uninterrupted run. A step cut short is
  caught alike; when no step restores, one error line."""
  workdir = str(tmp_path / "run")
  args = tiny_main_args(
    tiny_bert_dir,
    workdir,
    "--config.train.steps=4",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=2",
    NO_PREDICTION_FILES,
  )
  out = run(args)  # Checkpoints 2 and 4.
  assert out.returncode == 0, out.stderr[-3000:]
  restore = trainable_restorer(config_of_args(tiny_bert_dir))
  straight = jax.device_get(restore(workdir))
  latest = os.path.join(workdir, "checkpoints", "4")
  damaged = _flip_a_byte(latest)
  with pytest.raises(checkpoint.ChecksumError, match=re.escape(f"{damaged} differs from the")):
    restore(workdir, step=4)

  # A reader (predict, export, diagnose, embed --workdir) falls back to step 2 with one
  # warning, and moves nothing.
  out = predict_quietly(workdir, tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  warnings = [line for line in out.stderr.splitlines() if line.startswith("W")]
  assert len(warnings) == 1 and "newer step 4 does not restore (ChecksumError" in warnings[0]
  assert os.path.isdir(latest)

  out = run(args)  # The same command: resumes from step 2, trains steps 3-4 again.
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
  assert "checkpoint step 4 does not restore: moved it to" in out.stderr
  assert "resuming from step 2 (ChecksumError" in out.stderr
  corrupt = os.path.join(workdir, checkpoint.CORRUPT, "4")
  assert os.path.getsize(os.path.join(corrupt, os.path.relpath(damaged, latest))) > 0  # Kept.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  resumed = jax.device_get(restore(workdir))
  for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)  # Exactly the uninterrupted run's step 4.

  # When no step restores (both cut short), nothing is moved and the run stops with one line.
  for step in ("2", "4"):
    _truncate_data_files(os.path.join(workdir, "checkpoints", step))
  out = run(args)
  line = one_error_line(out)
  assert "Exception ignored" not in out.stderr, out.stderr[-3000:]
  assert f"no checkpoint in {os.path.join(workdir, 'checkpoints')} restores (steps 4, 2;" in line
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert os.listdir(os.path.join(workdir, checkpoint.CORRUPT)) == ["4"]


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (needs root, as in the project's containers; skipped otherwise)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() != 0 or not shutil.which("mount"):
    pytest.skip("mounting a small tmpfs needs root")
  mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
  if subprocess.run(mount, capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk, leave: int):
  """Fills `disk` with one file, then gives `leave` bytes back; returns the file."""
  filler = disk / "filler"
  if filler.exists():
    filler.unlink()
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
  try:
    while True:
      os.write(fd, b"\0" * 4096)
  except OSError as e:
    assert e.errno == errno.ENOSPC
  finally:
    os.close(fd)
  os.truncate(filler, max(os.path.getsize(filler) - leave, 0))
  return filler


@needs_data
def test_a_full_or_read_only_disk_is_one_error_line_and_the_same_command_resumes(
  tiny_bert_dir, small_disk
):
  """The disk full at the start (the lock file's write), then full during a checkpoint
  save, then read-only: one `error:` line each, naming what was being written and what to
  do; once space is freed the same command trains to the end."""
  workdir = small_disk / "run"
  args = tiny_main_args(
    tiny_bert_dir,
    workdir,
    "--config.train.steps=4",
    "--config.train.checkpoint_every=2",
    NO_PREDICTION_FILES,
  )
  todo = "free space and rerun the same command to resume"
  _fill(small_disk, leave=0)
  line = one_error_line(run(args))
  assert line == f"error: no space left on device writing {workdir / 'train.lock'}: {todo}"

  filler = _fill(small_disk, leave=120 * 1024)  # Config, lock and logs fit; a checkpoint not.
  out = run(args)
  line = one_error_line(out)
  assert "Exception ignored" not in out.stderr, out.stderr[-3000:]
  where = re.escape(str(workdir / "checkpoints"))
  assert re.fullmatch(
    rf"error: no space left on device writing checkpoint step \d+ to {where}: {todo}", line
  ), line

  filler.unlink()
  out = run(args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert Checkpointer(str(workdir), 1, 1).latest_step() == 4

  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  try:
    line = one_error_line(run(args))
  finally:
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
  assert f"cannot write to --workdir={workdir}: read-only file system" in line


def test_predict_on_a_workdir_without_checkpoints_is_one_line_and_creates_nothing(
  tiny_bert_dir, tmp_path
):
  """A run that has not saved yet: predict says so, and leaves no checkpoints/ behind."""
  workdir = tmp_path / "unsaved"
  workdir.mkdir()
  (workdir / "config.json").write_text(config_of_args(tiny_bert_dir).to_json_best_effort())
  line = one_error_line(predict_quietly(workdir, tmp_path))
  assert f"no checkpoint in {workdir / 'checkpoints'}" in line
  assert os.listdir(workdir) == ["config.json"]


@needs_data
def test_non_finite_state_is_never_saved_and_the_last_finite_checkpoints_are_kept(
  tiny_bert_dir, tmp_path
):
  """The issue's reproduction: a log step (8) after several checkpoint steps (every 1)."""
  workdir = tmp_path / "run"
  out = run(
    tiny_main_args(
      tiny_bert_dir,
      workdir,
      "--config.train.steps=40",
      "--config.train.learning_rate=1e6",
      "--config.train.checkpoint_every=1",
      "--config.train.keep_checkpoints=2",
      "--config.train.log_every=8",
    )
  )
  line = one_error_line(out)
  assert "non-finite" in line and "lower train.learning_rate" in line
  ckpt = Checkpointer(str(workdir), 1, 1)
  steps = ckpt.manager.all_steps()
  assert steps, line
  _, state, _, _ = train.init_state(run_spec.build(config_of_args(tiny_bert_dir, steps=40)))
  for step in steps:
    restored, _ = ckpt.restore(state, step=step)
    assert checkpoint.all_finite(restored), step
  assert not checkpoint.all_finite(jax.tree_util.tree_map(lambda x: x * np.nan, restored))
  # Caught at the save of the first non-finite step (before log step 8), which is not saved;
  # the two steps kept are the last two finite ones.
  assert f"at step {max(steps) + 1}: not saved (the last saved step, {max(steps)}," in line
  assert max(steps) < 8 and steps == [max(steps) - 1, max(steps)]


def test_checkpointer_refuses_to_save_a_non_finite_state(tmp_path):
  ckpt = Checkpointer(str(tmp_path), every=1, keep=2)
  good = {"w": np.ones(3, np.float32), "step": np.int32(1)}
  assert ckpt.save(1, good, {"step": 1})
  with pytest.raises(checkpoint.NonFiniteStateError, match="step 2.*last saved step, 1"):
    ckpt.save(2, {"w": np.array([1, np.inf, 0], np.float32), "step": np.int32(2)}, {"step": 2})
  ckpt.close()
  assert Checkpointer(str(tmp_path), 1, 1).manager.all_steps() == [1]


# --- max_length against the model's positions


def test_max_length_above_the_models_positions_is_refused_naming_both(
  tiny_bert_dir, tmp_path, capsys
):
  config = tiny_config(tiny_bert_dir)  # The tiny model has 64 positions.
  config.model.max_length = 100
  config.train.length_buckets = (128,)
  with pytest.raises(
    run_spec.ConfigError, match="max_length=100 is above the max_position_embeddings=64"
  ):
    run_spec.build(config)

  sentences = tmp_path / "in.txt"
  sentences.write_text("a cat\n")
  # The tool in this process, as its command line runs it (a subprocess added only start-up).
  args = [
    "embed",
    f"--model={tiny_bert_dir}",
    f"--input={sentences}",
    f"--output={tmp_path / 'out.npz'}",
    "--max_length=100",
  ]
  status = cli.call(embed.main, embed.FLAGS, args)
  line = one_error_line_of(status, capsys.readouterr().err)
  assert "--max_length=100 is above the max_position_embeddings=64" in line
  assert not (tmp_path / "out.npz").exists()


# --- Data that would make every batch or dev score meaningless


@needs_data
@pytest.mark.parametrize("case", ["sts_dev_of_one_row", "seqs_per_task_above_the_data"])
def test_an_undefined_dev_metric_or_a_batch_larger_than_the_data_is_one_line(
  tiny_bert_dir, tmp_path, case
):
  """An STS dev file of one row (Pearson undefined: it was scored 0 and entered overall),
  or train.seqs_per_task=64 on 40 rows (each batch repeated its examples): main.py stops
  with one line naming the file or the key, before the model is built."""
  workdir = tmp_path / "run"
  if case == "sts_dev_of_one_row":
    data = tmp_path / "data"
    data.mkdir()
    for name in os.listdir(DATA_DIR):
      os.symlink(os.path.join(DATA_DIR, name), data / name)
    dev = data / files.FILES["sts", "dev"]
    dev.unlink()
    with open(os.path.join(DATA_DIR, files.FILES["sts", "dev"])) as f:
      dev.write_text(f.readline() + f.readline())
    args = tiny_main_args(tiny_bert_dir, workdir, f"--config.data_dir={data}")
    expected = f"{dev}: the sts dev set has 1 usable row: its metric, the Pearson correlation"
  else:
    args = tiny_main_args(tiny_bert_dir, workdir, "--config.train.seqs_per_task=64")
    expected = (
      "train.seqs_per_task=64 puts more examples of a task in each batch than it has (sst "
      "has 40 training examples per epoch, a batch takes 64): every batch would repeat "
      "examples; use train.seqs_per_task=40 or less"
    )
  assert expected in one_error_line(run(args))
  checkpoints = workdir / "checkpoints"
  assert not (checkpoints.exists() and os.listdir(checkpoints))
  assert not (workdir / "metrics.jsonl").exists()


# --- embed: row i is line i


def test_embed_keeps_row_i_for_line_i_and_embeds_a_blank_line_as_empty(
  tiny_bert_dir, tmp_path, capsys
):
  path = tmp_path / "in.txt"
  path.write_text("a cat\n\nthe dog\n")
  args = [
    "embed",
    f"--model={tiny_bert_dir}",
    f"--input={path}",
    f"--output={tmp_path / 'out.npz'}",
    "--max_length=16",
  ]
  assert cli.call(embed.main, embed.FLAGS, args) == 0, capsys.readouterr().err[-2000:]
  arrays = np.load(tmp_path / "out.npz")
  assert arrays["pooled"].shape[0] == 3
  assert arrays["attention_mask"][1].sum() == 2  # [CLS] [SEP]: the empty sentence.
  # Line 3's sentence alone, embedded as the command does (its defaults: mean pooling,
  # batches of 64), in a call of its own: row 2 is that sentence, not shifted.
  model, params, tokenizer = embed.load_encoder(tiny_bert_dir, None, None)
  alone = embed.embed(model, params, tokenizer, ["the dog"], None, 16)
  np.testing.assert_allclose(alone["pooled"][0], arrays["pooled"][2], atol=1e-5)

  pairs = tmp_path / "pairs.txt"
  pairs.write_text("a\tb\n\nc\td\n  \n")
  with pytest.raises(ValueError, match=r"lines \[2, 4\] are blank"):
    embed.read_lines(str(pairs))


# --- metrics.jsonl after a resume


def test_metrics_log_drops_records_after_the_resumed_step_and_a_cut_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
    "".join(
      json.dumps(r) + "\n"
      for r in [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.9},
        {"step": 2, "dev/overall": 0.5},
        {"step": 3, "loss": 0.8},
      ]
    )
    + '{"step": 4, "lo'
  )
  log = MetricsLog(str(tmp_path), resume_step=2)
  log.write(2, {"overall": 0.5}, prefix="dev/")  # Already there: not written twice.
  log.write(3, {"loss": 0.7})
  log.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r["step"], "loss" in r) for r in rows] == [(1, True), (2, True), (2, False), (3, True)]
  assert rows[-1]["loss"] == 0.7


def test_metrics_log_writes_again_the_resumed_steps_records_the_file_lost(tmp_path):
  """The records of a checkpointed step go into its checkpoint (records_at); resuming from
  it, those that the file lost (its line cut) are written again, the others are not."""
  log = MetricsLog(str(tmp_path))
  log.write(1, {"loss": 1.0})
  log.write(2, {"loss": 0.9})
  log.write(2, {"overall": 0.5}, prefix="dev/")
  stored = log.records_at(2)  # What the trainer's checkpoint of step 2 keeps.
  log.close()
  assert stored == [{"step": 2, "loss": 0.9}, {"step": 2, "dev/overall": 0.5}]
  assert log.records_at(1) == []
  path = tmp_path / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text(lines[0] + lines[1] + lines[2][:9])  # The dev record cut short.
  MetricsLog(str(tmp_path), resume_step=2, resume_records=stored).close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows == [{"step": 1, "loss": 1.0}, *stored]


@needs_data
def test_metrics_have_each_step_once_after_kill_9_and_resume(tiny_bert_dir, tmp_path):
  """kill -9 after step 6, the resumed step's record cut in half: the resumed run writes it
  again from its checkpoint (MetricsLog resume_records), so each step is logged once."""
  workdir = tmp_path / "run"
  args = tiny_main_args(
    tiny_bert_dir,
    workdir,
    "--config.train.steps=12",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=4",
    NO_PREDICTION_FILES,
  )
  proc = popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  while len([r for r in _records(workdir) if "loss" in r]) < 6:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  # The file as a lost write (power loss, a full disk) leaves it: cut in the middle of the
  # record of the step the run resumes from, which was written just before its checkpoint.
  resumed = max(Checkpointer(str(workdir), 1, 1).manager.all_steps())
  lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
  cut = next(i for i, line in enumerate(lines) if json.loads(line)["step"] == resumed)
  (workdir / "metrics.jsonl").write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])
  out = run(args)
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
  assert [r["step"] for r in records if "dev/overall" in r] == [12]
  run(args)  # A finished run rerun: its final evaluation is not written again.
  assert read_metrics(str(workdir)) == records


def _records(workdir) -> list[dict]:
  path = workdir / "metrics.jsonl"
  out = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out
