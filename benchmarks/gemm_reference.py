"""The dense-layer matmuls of one full fine-tuning step, timed in XLA and in PyTorch in one
process, interleaved: is a gap between the two steps the matmul kernels' or ours?

Full fine-tuning spends most of its FLOPs in three matmuls per dense layer: the forward
x @ W, the input gradient g @ W^T and the weight gradient x^T g (per task, as the per-task
step computes it: XLA a batched dot over the task axis, PyTorch one per task's backward).
This script times exactly those shapes for the bench's step (3 tasks x 64 x 64 tokens on
the bundled model: 12,288 tokens, hidden 384, FFN 1536; six dense layers per encoder
layer: query, key, value, attention output (H -> H), intermediate (H -> F), output
(F -> H)) in both frameworks, f32, same threads, alternating shape by shape and round by
round so that a shared host's changing load falls on both alike. It prints GFLOP/s per
shape and the matmul seconds one step needs at those rates, with numpy's bundled BLAS
(OpenBLAS) as a third kernel: the rate a call from XLA into that library could reach.

Needs jax and torch in one environment (neither installs the other for mtl_jax):
  /tmp/torch-venv/bin/pip install jax==<the .venv's version> jaxlib==<same>
  /tmp/torch-venv/bin/python benchmarks/gemm_reference.py [--rounds 7] [--threads 2]
XLA compiles with the trainer's options (`mtl_jax.xla_options`). After each call the
script sleeps --pause seconds (untimed): a BLAS's worker threads spin for a while after a
call (OpenBLAS's for up to ~0.1 s), and a kernel timed right after numpy's ran 1.4x slower
(139 -> 96 GFLOP/s for XLA's forward at 12,288 x 384 x 1536), which made XLA look 1.3x
slower than numpy's BLAS here before the pause was added (BENCHMARKS.md, seventh session).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mtl_jax import machine

try:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
except ImportError as e:
  sys.exit(f"{e.name} is not installed here: this comparison needs jax and torch (docstring)")


def shapes(hidden: int, ffn: int) -> list[dict]:
  """The dense matmuls of one encoder layer: kind, (in, out) and how many the layer runs."""
  out = []
  for (d_in, d_out), per_layer in (((hidden, hidden), 4), ((hidden, ffn), 1), ((ffn, hidden), 1)):
    for kind in ("forward x@W", "input grad g@W^T", "weight grad x^T g per task"):
      out.append({"kind": kind, "in": d_in, "out": d_out, "count": per_layer})
  return out


def jax_fn(kind: str, tasks: int, n: int, d_in: int, d_out: int):
  """The matmul as the trainer's compiled step runs it (its XLA options), ready to call."""
  from mtl_jax import xla_options

  normal = lambda *shape: jax.random.normal(jax.random.PRNGKey(0), shape)
  if kind.startswith("forward"):
    fn, args = (lambda x, w: x @ w), (normal(tasks * n, d_in), normal(d_in, d_out))
  elif kind.startswith("input"):
    fn, args = (lambda g, w: g @ w.T), (normal(tasks * n, d_out), normal(d_in, d_out))
  else:  # vmap over tasks of x^T g: one batched dot.
    fn = lambda x, g: jnp.einsum("tki,tkj->tij", x, g)
    args = (normal(tasks, n, d_in), normal(tasks, n, d_out))
  options = xla_options.train_step_options() or {}
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  return lambda: compiled(*args).block_until_ready()


def torch_fn(kind: str, tasks: int, n: int, d_in: int, d_out: int):
  """The same matmul as nn.Linear's forward and backward compute it."""
  if kind.startswith("forward"):
    x, w = torch.randn(tasks * n, d_in), torch.randn(d_out, d_in)
    return lambda: x @ w.T
  if kind.startswith("input"):
    g, w = torch.randn(tasks * n, d_out), torch.randn(d_out, d_in)
    return lambda: g @ w
  xs, gs = torch.randn(tasks, n, d_in), torch.randn(tasks, n, d_out)
  return lambda: [gs[t].T @ xs[t] for t in range(tasks)]


def numpy_fn(kind: str, tasks: int, n: int, d_in: int, d_out: int):
  """The same matmul in numpy: its bundled BLAS (OpenBLAS), a third kernel for scale."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
  if kind.startswith("forward"):
    x, w = normal(tasks * n, d_in), normal(d_in, d_out)
    return lambda: x @ w
  if kind.startswith("input"):
    g, w = normal(tasks * n, d_out), normal(d_in, d_out)
    return lambda: g @ w.T
  xs, gs = normal(tasks, n, d_in), normal(tasks, n, d_out)
  return lambda: [xs[t].T @ gs[t] for t in range(tasks)]


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--tasks", type=int, default=3)
  parser.add_argument("--tokens_per_task", type=int, default=64 * 64)
  parser.add_argument("--hidden", type=int, default=384)
  parser.add_argument("--ffn", type=int, default=1536)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument(
    "--pause", type=float, default=0.3, help="s of sleep after each call, untimed (docstring)"
  )
  args = parser.parse_args()
  start = machine.cpu_times()
  torch.set_num_threads(args.threads)
  t, n = args.tasks, args.tokens_per_task
  rows = shapes(args.hidden, args.ffn)
  for row in rows:
    row["fns"] = {
      "xla": jax_fn(row["kind"], t, n, row["in"], row["out"]),
      "torch": torch_fn(row["kind"], t, n, row["in"], row["out"]),
      "numpy": numpy_fn(row["kind"], t, n, row["in"], row["out"]),
    }
    row["times"] = {name: [] for name in row["fns"]}
    for fn in row["fns"].values():
      fn()  # Warm-up.
  for _ in range(args.rounds):
    for row in rows:
      for name, fn in row["fns"].items():
        row["times"][name].append(timed(fn))
        time.sleep(args.pause)
  print(machine.machine_line(None, ("jax", "jaxlib", "torch")))
  print(
    f"{t} tasks x {n} tokens, hidden {args.hidden}, FFN {args.ffn}, f32, {args.threads} "
    f"threads; median of {args.rounds} interleaved rounds\n"
  )
  print(
    "| matmul | in -> out | per layer | XLA GFLOP/s | PyTorch GFLOP/s | numpy GFLOP/s "
    "| XLA / PyTorch |"
  )
  print("|---|---|---|---|---|---|---|")
  step = {"xla": 0.0, "torch": 0.0, "numpy": 0.0}
  for row in rows:
    flops = 2 * t * n * row["in"] * row["out"]
    med = {name: statistics.median(ts) for name, ts in row["times"].items()}
    for name in step:
      step[name] += med[name] * row["count"] * args.layers
    print(
      f"| {row['kind']} | {row['in']} -> {row['out']} | {row['count']} | "
      f"{flops / med['xla'] / 1e9:.0f} | {flops / med['torch'] / 1e9:.0f} | "
      f"{flops / med['numpy'] / 1e9:.0f} | "
      f"{med['torch'] / med['xla']:.2f}x |"
    )
  print(
    f"\ndense matmuls of one step ({args.layers} layers): XLA {step['xla']:.2f} s, "
    f"PyTorch {step['torch']:.2f} s ({step['torch'] / step['xla']:.2f}x), numpy "
    f"{step['numpy']:.2f} s ({step['numpy'] / step['xla']:.2f}x)"
  )
  print(machine.steal_line(start, machine.cpu_times()))


if __name__ == "__main__":
  main()
