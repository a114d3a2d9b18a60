"""The machine a benchmark ran on, as one line to print above its table.

Speed tables are absolute times from one CPU, and the same step takes several times longer
on one CPU than on another: a table that does not name its CPU, vector ISA, core count,
software versions and measured matmul peak cannot be compared with anything.

Standard library only (no jax import): `benchmarks/torch_reference.py` prints the same line
from an environment that has PyTorch and no jax.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

# /proc/cpuinfo flags -> the names the tables use, widest first.
ISA_FLAGS = (
  ("amx_tile", "AMX"),
  ("avx512f", "AVX-512"),
  ("avx512_bf16", "AVX-512 BF16"),
  ("avx2", "AVX2"),
)


def _first_cpu(path: str) -> dict[str, str]:
  """The fields of the first CPU's block of /proc/cpuinfo (up to its blank line; the first
  of a repeated key); {} where there is no such file (not Linux)."""
  fields: dict[str, str] = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          if fields:
            break  # The end of the first CPU's block.
          continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
  """(model name, flags) of the first CPU listed; ("unknown", {}) where there is no such
  file (not Linux)."""
  cpu = _first_cpu(path)
  return cpu.get("model name") or platform.processor() or "unknown", set(
    cpu.get("flags", "").split()
  )


def cpu_summary(cpuinfo: str = "/proc/cpuinfo") -> str:
  """ "AMD EPYC (family 25 model 17; AVX-512, AVX-512 BF16, AVX2), 2 cores": the CPU a run's
  wall time was measured on, for a ledger row. Family and model tell apart CPUs that share
  a marketing name (two "AMD EPYC" generations ran this project's studies, 2-3x apart per
  step); they are left out where /proc/cpuinfo has none."""
  model, flags = cpu_info(cpuinfo)
  cpu = _first_cpu(cpuinfo)
  ids = ""
  if "cpu family" in cpu:
    ids = (
      f"family {cpu['cpu family']}" + (f" model {cpu['model']}" if "model" in cpu else "") + "; "
    )
  return f"{model} ({ids}{vector_isa(flags)}), {cores()} cores"


def vector_isa(flags: set[str]) -> str:
  """ "AMX, AVX-512, AVX-512 BF16, AVX2"-style list of what the OS reports; "none of
  AVX2/AVX-512/AMX" when it reports none of them."""
  found = [name for flag, name in ISA_FLAGS if flag in flags]
  return ", ".join(found) if found else "none of AVX2/AVX-512/AMX"


def cores() -> int:
  """CPUs this process may run on (its affinity), else the machine's count."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 0


def versions(packages: tuple[str, ...]) -> str:
  """ "jax 0.10.2, jaxlib 0.10.2"; a package not installed is left out."""
  out = []
  for name in packages:
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      pass
  return ", ".join(out)


def machine_line(
  matmul_peak_flops: float | None,
  packages: tuple[str, ...] = ("jax", "jaxlib"),
  cpuinfo: str = "/proc/cpuinfo",
) -> str:
  """One line naming the machine, in the form "machine: <CPU model> (<vector ISA>), <N> cores,
  <OS> <arch>, jax <version>, jaxlib <version>; f32 2048^3 matmul peak measured now: <X>
  GFLOP/s"."""
  model, flags = cpu_info(cpuinfo)
  peak = (
    ""
    if matmul_peak_flops is None
    else f"; f32 2048^3 matmul peak measured now: {matmul_peak_flops / 1e9:.0f} GFLOP/s"
  )
  return (
    f"machine: {model} ({vector_isa(flags)}), {cores()} cores, {platform.system()} "
    f"{platform.machine()}, {versions(packages)}{peak}"
  )


def cpu_times(stat: str = "/proc/stat") -> tuple[int, int] | None:
  """(steal, total) CPU time in clock ticks since boot, from /proc/stat's "cpu" line; None
  where there is no such file (not Linux) or it has no steal column."""
  try:
    with open(stat) as f:
      fields = f.readline().split()
  except OSError:
    return None
  if len(fields) < 9 or fields[0] != "cpu":
    return None
  ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
  return ticks[7], sum(ticks)


def steal_line(start: tuple[int, int] | None, end: tuple[int, int] | None) -> str:
  """ "CPU steal during this run: 30% ..." between two `cpu_times` readings, or "" when
  either is missing.

  Steal is time this VM's CPUs were ready to run but the host ran another guest: on a shared
  host it varies from day to day, and a step time measured under it is that much slower and
  noisier. A table is only as good as its
  steal share, so benchmarks print it under their table."""
  if start is None or end is None or end[1] <= start[1]:
    return ""
  share = (end[0] - start[0]) / (end[1] - start[1])
  note = " (timings noisy: compare only runs interleaved in time)" if share > 0.05 else ""
  return f"CPU steal during this run: {100 * share:.0f}% of CPU time{note}"
