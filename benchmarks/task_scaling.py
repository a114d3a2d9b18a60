"""How the train step grows with the number of tasks T: step time and peak memory of the
summed step and of each gradient method at T = 2, 3, 4, 6, 8.

  python -m benchmarks.task_scaling [--tasks 2,3,4,6,8] [--methods summed,sum,pcgrad,...]
      [--mode lora] [--seqs_per_task 16] [--length 32] [--steps 5] [--out DIR]   (repo root)

Each (T, method) is one `python -m mtl_jax.bench --one=METHOD:MODE --tasks=T` process
(its own peak memory), on the bundled model with random tokens at a fixed shape
[T, seqs_per_task, length]: the tasks are the CS224N tasks in turn (sst, quora, sts, sst_2,
...; `mtl_jax.tools.bench.repeated_tasks`). Prints two markdown tables (with the machine
line): step time by T per method with the seconds each added task costs, then every row; and
writes them, the rows (rows.json) and a plot (task_scaling.png: step time and peak RSS
against T) into --out. "per task" is the step time over T; "vs summed" the step over the
summed step at the same T, so what a method adds beyond the per-task gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from mtl_jax.grad import registry
from mtl_jax.runtime import machine
from mtl_jax.tools import bench

# "fixed" needs a weight per task (grad.kwargs.weights); its step is sum's.
ALL_METHODS = ("summed", *(m for m in registry.METHODS if m != "fixed"))


def table(rows: list[dict]) -> str:
  """One line per (method, T): step time, per task, vs summed, GFLOP, peak RSS."""
  summed = {r["tasks"]: r["step_s"] for r in rows if r["method"] == "summed"}
  lines = [
    "| method | T | step s | per task s | vs summed | GFLOP/step | peak RSS MiB |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (ALL_METHODS.index(r["method"]), r["tasks"])):
    t = r["tasks"]
    rel = f"{r['step_s'] / summed[t]:.2f}x" if t in summed else "-"
    lines.append(
      f"| {r['method']} | {t} | {r['step_s']:.3f} | {r['step_s'] / t:.3f} | {rel} | "
      f"{r['flops_per_step'] / 1e9:.1f} | {r['peak_rss_mib']:.0f} |"
    )
  return "\n".join(lines)


def by_t_table(rows: list[dict]) -> str:
  """One line per method: its step time at each T, the least-squares seconds each added task
  costs (the slope of step time in T), and peak RSS at the smallest and largest T."""
  counts = sorted({r["tasks"] for r in rows})
  lines = [
    "| method | " + " | ".join(f"T={t} s" for t in counts) + " | s per added task | peak RSS MiB |",
    "|---" * (len(counts) + 3) + "|",
  ]
  for method in sorted({r["method"] for r in rows}, key=ALL_METHODS.index):
    mine = {r["tasks"]: r for r in rows if r["method"] == method}
    ts = sorted(mine)
    cells = [f"{mine[t]['step_s']:.2f}" if t in mine else "-" for t in counts]
    fit = statistics.linear_regression(ts, [mine[t]["step_s"] for t in ts]) if len(ts) > 1 else None
    slope = f"{fit.slope:.3f}" if fit else "-"
    rss = f"{mine[ts[0]]['peak_rss_mib']:.0f} → {mine[ts[-1]]['peak_rss_mib']:.0f}"
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {slope} | {rss} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
  """Step time and peak RSS against T, a line per method."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["tasks"])
    ts = [r["tasks"] for r in mine]
    time_ax.plot(ts, [r["step_s"] for r in mine], marker="o", markersize=4, label=method)
    rss_ax.plot(ts, [r["peak_rss_mib"] for r in mine], marker="o", markersize=4, label=method)
  time_ax.set(title="Step time", xlabel="tasks T", ylabel="seconds per step")
  rss_ax.set(title="Peak RSS of the process", xlabel="tasks T", ylabel="MiB")
  for ax in (time_ax, rss_ax):
    ax.grid(alpha=0.3)
  time_ax.legend(fontsize=7, ncol=2)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tasks", default="2,3,4,6,8")
  parser.add_argument("--methods", default=",".join(ALL_METHODS))
  parser.add_argument("--mode", default="lora")
  parser.add_argument("--seqs_per_task", type=int, default=16)
  parser.add_argument("--length", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default="runs/task_scaling")
  args = parser.parse_args()
  task_counts = [int(t) for t in args.tasks.split(",")]
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in ALL_METHODS]
  if unknown or min(task_counts) < 1:
    parser.error(f"unknown methods {unknown} (valid: {', '.join(ALL_METHODS)}) or T < 1")
  start = machine.cpu_times()
  header = "\n".join(
    [
      machine.machine_line(bench.matmul_peak_flops()),
      bench.model_line(None),
      f"shapes: T tasks x {args.seqs_per_task} sequences x {args.length} tokens, f32, "
      f"adapter.kind={args.mode}; median of {args.steps} steps after 2 warm-up steps",
    ]
  )
  rows = []
  for method in methods:
    for t in task_counts:
      row = bench.run_in_process(
        method,
        args.mode,
        tasks=t,
        seqs_per_task=args.seqs_per_task,
        length=args.length,
        steps=args.steps,
      )
      if row is not None:
        rows.append(row)
        print(f"done T={t} {method}: {row['step_s']:.3f} s/step", file=sys.stderr)
  steal = machine.steal_line(start, machine.cpu_times())
  text = f"{header}\n\n{by_t_table(rows)}\n\n{table(rows)}\n{steal}"
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(args.out, "rows.json"), "w") as f:
    json.dump(rows, f, indent=1)
  plot(rows, os.path.join(args.out, "task_scaling.png"), header.splitlines()[0])
  return 0 if len(rows) == len(methods) * len(task_counts) else 1


if __name__ == "__main__":
  sys.exit(main())
