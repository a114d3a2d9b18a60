"""Where a train step's time goes: a `jax.profiler` trace of the bench's PCGrad step,
its op events summed by kind (the HLO op name without its number) and output shape.

  python -m benchmarks.profile_step full|lora [--steps 2] [--top 40] [--trace_dir DIR]
      (from the repo root; the Perfetto trace stays in DIR for ui.perfetto.dev)

Read it with care (BENCHMARKS.md, fifth session): XLA:CPU runs independent ops side by
side on its threads, so a kind's total is thread time, not a share of the step, and the
large matmuls (`dot`) hand their work to a thread pool outside the recorded event, so
their totals are far below their real cost (time them with `benchmarks/gemm_reference.py`).
A change is measured by `benchmarks/compare_step.py`, not by these totals.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax

from mtl_jax import bench, hugepages, machine

_NOT_OPS = re.compile(r"^(\$|Thunk|Pjit|Xla|Common|end: |Allocate)")


def output_shapes(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its output shape, from the compiled module's text."""
  found = re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) [\w\-]+\(", hlo_text, re.M)
  return {m.group(1): m.group(2) for m in found}


def summarize(trace_file: str, shapes: dict[str, str], steps: int) -> list[tuple]:
  """[(seconds per step, ops per step, kind, shape)], largest first."""
  with gzip.open(trace_file) as f:
    events = json.load(f)["traceEvents"]
  seconds, counts = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not _NOT_OPS.match(e["name"]):
      key = (re.sub(r"\.\d+$", "", e["name"]), shapes.get(e["name"], "?"))
      seconds[key] += e["dur"] / 1e6 / steps
      counts[key] += 1
  return [(s, counts[k] // steps, *k) for k, s in seconds.most_common()]


def main() -> None:
  hugepages.reexec_with_huge_pages()  # As the trainer runs (mtl_jax/hugepages.py).
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["lora", "full"])
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=40)
  parser.add_argument("--trace_dir", default=None)
  args = parser.parse_args()
  run = bench.step_runner("pcgrad", args.mode)  # Compiled as the trainer compiles, warmed up.
  start, cpu_start = time.perf_counter(), machine.cpu_times()
  run()
  print(f"one step, not traced: {time.perf_counter() - start:.2f} s")
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      run()
  trace_file = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
  rows = summarize(trace_file, output_shapes(run.compiled.as_text()), args.steps)
  print(f"op events per step: {sum(r[0] for r in rows):.2f} s of thread time; trace: {trace_dir}")
  print("| s per step | ops | kind | output shape |\n| --- | --- | --- | --- |")
  for seconds, count, kind, shape in rows[: args.top]:
    print(f"| {seconds:.3f} | {count} | {kind} | {shape} |")
  print(machine.steal_line(cpu_start, machine.cpu_times()))


if __name__ == "__main__":
  main()
