"""Two processes on one machine over jax.distributed (loopback only) train as one 4-device
job: `scripts/launch_local.py` starts `main.py` twice with 2 forced CPU devices each. The
run is stopped by SIGTERM (to both processes), resumed by the same command, and must end
with the parameters and dev metrics of one uninterrupted process with 4 devices.

Bounded in time: every process has a timeout, the coordinator port is a free port of
127.0.0.1, the model is the tiny test BERT and the run is 6 steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import DATA_DIR, needs_data, tiny_config, trainable_restorer

from mtl_jax.runtime import parallel
from mtl_jax.runtime.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "scripts", "launch_local.py")
STEPS = 6
TIMEOUT_S = 600  # Per run; a run took 1-2 min on a 2-core machine shared with other jobs.


def _config_args(model_dir: str, workdir) -> list[str]:
  """main.py on the tiny model, fully fine-tuned (so that the weights and their optimizer
  state, not orbax's per-process metadata, make up most of a checkpoint): one length
  bucket, a dev evaluation (and best checkpoint) at step 3, checkpoints every 2 steps."""
  return [
    sys.executable,
    os.path.join(ROOT, "main.py"),
    "--config=configs/default.py",
    f"--workdir={workdir}",
    f"--config.model.path={model_dir}",
    f"--config.data_dir={DATA_DIR}",
    "--config.model.max_length=32",
    "--config.data_limit=40",
    "--config.train.length_buckets=(32,)",
    "--config.train.seqs_per_task=8",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_every=3",
    "--config.eval.seqs_per_batch=16",
    "--config.eval.write_predictions=False",
    "--config.grad.method=pcgrad",
    "--config.adapter.kind=full",
  ]


def _env(devices: int | None = None) -> dict:
  """No persistent compilation cache: a process that reads its step from the cache while
  another compiles it waits for it at the first collective, and gloo gives up after 30 s."""
  env = dict(os.environ)
  for name in (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_BIND_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
  ):
    env.pop(name, None)
  if devices:  # Added to the tests' compiler flags (conftest), as the launcher adds it.
    flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
  return env


def _launch(args: list[str], tmp_path, log) -> subprocess.Popen:
  cmd = [sys.executable, LAUNCHER, "--processes=2", "--devices_per_process=2", "--", *args]
  return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _logged_steps(workdir) -> list[int]:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def _wait(proc: subprocess.Popen, log_path) -> int:
  try:
    return proc.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()  # The launcher; its processes then fail to reach each other and exit.
    pytest.fail(f"timed out:\n{log_path.read_text()[-4000:]}")


@pytest.mark.slow
@needs_data
def test_two_processes_resume_after_sigterm_and_match_one_process(tiny_bert_dir, tmp_path):
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  one_log = open(tmp_path / "one.log", "w")
  one = subprocess.Popen(
    _config_args(tiny_bert_dir, single),
    cwd=ROOT,
    env=_env(devices=4),
    stdout=one_log,
    stderr=subprocess.STDOUT,
  )

  # Two processes x 2 devices; SIGTERM (forwarded to both) once a step is logged.
  args = _config_args(tiny_bert_dir, multi)
  log_path = tmp_path / "two.log"
  with open(log_path, "w") as log:
    proc = _launch(args, tmp_path, log)
    deadline = time.time() + TIMEOUT_S
    while not _logged_steps(multi):
      assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code = _wait(proc, log_path)
  output = log_path.read_text()
  assert code == 130, output[-4000:]
  assert "Traceback" not in output, output[-4000:]
  saved = Checkpointer(str(multi), 1, 1).latest_step()
  assert saved is not None and 1 <= saved < STEPS, output[-4000:]  # Stopped early, saved.
  assert output.count(f"saved step {saved} to {multi}") == 2  # Each process says so ...
  assert _logged_steps(multi) == list(range(1, saved + 1))  # ... the primary logs once.

  with open(log_path, "a") as log:  # The same command resumes and finishes.
    proc = _launch(args, tmp_path, log)
    code = _wait(proc, log_path)
  output = log_path.read_text()
  assert code == 0, output[-4000:]
  assert output.count(f"resumed from {multi}/checkpoints at step {saved}") == 2
  assert _logged_steps(multi) == list(range(1, STEPS + 1))  # Every step logged once.
  checkpoints = sorted(os.listdir(multi / "checkpoints"))
  assert not [d for d in checkpoints if "tmp" in d], checkpoints  # Every save completed.

  assert one.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "one.log").read_text()[-4000:]
  one_log.close()
  # Written once: the processes' checkpoint holds about the bytes of the one-process one,
  # not a copy per process (~2x). Not exactly: orbax adds metadata per process and chunks
  # replicated arrays over the processes' replicas, by timing (1.2-1.5x seen on LoRA runs,
  # whose checkpoints are mostly metadata; 1.03x and once 1.65x on this full fine-tuning
  # run). A copy per process doubles data and metadata alike: >= 2x.
  sizes = [_size(d / "checkpoints" / str(STEPS)) for d in (multi, single)]
  assert sizes[0] < 1.9 * sizes[1], sizes

  results = [json.loads((d / "results.json").read_text()) for d in (multi, single)]
  assert results[0]["devices"] == results[1]["devices"] == 4
  for name, value in results[1]["metrics"].items():
    assert abs(results[0]["metrics"][name] - value) <= 1e-4, name
  config = tiny_config(tiny_bert_dir)
  config.adapter.kind = "full"
  restore = trainable_restorer(config)
  trained = jax.tree_util.tree_flatten_with_path(restore(str(multi)))[0]
  reference = jax.tree.leaves(restore(str(single)))
  compared = 0
  for (path, a), b in zip(trained, reference):
    # The attention key bias has no gradient but rounding noise (softmax ignores a shift
    # shared by all keys), which Adam scales up to learning-rate-sized steps: ~1e-4 apart
    # between any two device layouts, while every other leaf agrees to ~1e-7.
    if "'key']['bias']" not in jax.tree_util.keystr(path):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
      compared += 1
  assert compared == len(reference) - 2  # All but the 2 layers' key biases.


def _size(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_launcher_gives_each_process_its_place_in_the_job():
  sys.path.insert(0, os.path.dirname(LAUNCHER))
  try:
    import launch_local
  finally:
    sys.path.remove(os.path.dirname(LAUNCHER))
  env = launch_local.process_env(
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"}, 1, 2, 1234, 2
  )
  assert env["JAX_COORDINATOR_ADDRESS"] == env["JAX_COORDINATOR_BIND_ADDRESS"] == "127.0.0.1:1234"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
  assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=2"
  assert 0 < launch_local.free_port() < 65536


def test_a_failing_process_ends_the_job_with_its_exit_code(tmp_path):
  """Process 1 fails at once; process 0 would wait forever: the launcher ends it."""
  script = (
    "import os, sys, time\nif os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(600)\n"
  )
  start = time.time()
  out = subprocess.run(
    [sys.executable, LAUNCHER, "-n", "2", "--", sys.executable, "-c", script],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert out.returncode == 3 and time.time() - start < 60, out.stderr
  assert "process 1 exited with 3; terminating the others" in out.stderr


@pytest.mark.parametrize("before, after", [(None, "gloo"), ("gloo", "gloo"), ("mpi", "mpi")])
def test_multi_process_cpu_jobs_get_gloo_collectives_unless_one_is_chosen(before, after):
  """Only the CPU client reads it, when the backends are created; restored afterwards."""
  name = "jax_cpu_collectives_implementation"
  saved = jax.config.values[name]
  try:
    jax.config.update(name, before)
    assert parallel.enable_cpu_collectives() == after
    assert jax.config.values[name] == after
  finally:
    jax.config.update(name, saved)


def test_one_process_decides_alone():
  assert parallel.any_process(True) is True and parallel.any_process(False) is False
