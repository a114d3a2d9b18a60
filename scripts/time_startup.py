"""How much sooner a second identical run trains, with XLA's persistent compilation cache.

  python scripts/time_startup.py [--config=configs/pcgrad.py] [--steps=25] [-- --config.KEY=V ...]

Runs the same `python main.py --config=CONFIG` twice, each in a fresh workdir, with the
cache pointed at a new empty directory (MTL_JAX_COMPILATION_CACHE): the first run compiles
everything and fills it, the second loads from it. Each run is stopped with SIGTERM once
it has logged --steps steps. Prints, per run, the seconds from launch to the first step and
to step --steps, and the cache's size. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps_logged(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line).get("step", 0) for line in f if '"loss"' in line]
  return max(steps, default=0)


def timed_run(
  config: str, workdir: str, cache: str, steps: int, overrides: list[str]
) -> tuple[float, float]:
  """(seconds to step 1, seconds to step `steps`) of one run, stopped after `steps`."""
  env = dict(os.environ, MTL_JAX_COMPILATION_CACHE=cache)
  args = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}"]
  args += [*overrides, "--config.train.log_every=1"]  # Logging only: not part of the compiled step.
  start = time.perf_counter()
  proc = subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  first = None
  while proc.poll() is None:
    done = _steps_logged(workdir)
    if done >= 1 and first is None:
      first = time.perf_counter() - start
    if done >= steps:
      break
    time.sleep(0.2)
  last = time.perf_counter() - start
  proc.send_signal(signal.SIGTERM)
  proc.wait()
  if first is None:
    sys.exit(f"error: the run in {workdir} ended before its first step (exit {proc.returncode})")
  return first, last


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/pcgrad.py")
  parser.add_argument("--steps", type=int, default=25)
  parser.add_argument("overrides", nargs="*", help="more main.py flags, after --")
  a = parser.parse_args()
  root = tempfile.mkdtemp(prefix="time_startup-")
  cache = os.path.join(root, "xla")
  try:
    print(f"| run | cache | to step 1 s | to step {a.steps} s |\n|---|---|---|---|")
    for run, state in ((1, "empty"), (2, "filled by run 1")):
      first, last = timed_run(
        a.config, os.path.join(root, f"run{run}"), cache, a.steps, a.overrides
      )
      print(f"| {run} | {state} | {first:.1f} | {last:.1f} |", flush=True)
    size = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    print(f"\ncache: {len(os.listdir(cache))} entries, {size / 2**20:.1f} MiB")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
