"""One encoder layer's attention core, forward and backward, in XLA and in PyTorch, timed in
one process, interleaved: is attention where full fine-tuning loses to PyTorch?

The core is what `mtl_jax.models.bert.SelfAttention` computes between its projections:
scores q k^T / sqrt(d), the padding mask, softmax, dropout on the probabilities, and the
context p v, with the gradient of all three inputs. Shapes are the bench's step (3 tasks x
64 sequences x 64 tokens, 12 heads of 32 on the bundled model). PyTorch runs it as a
training BertModel does: `scaled_dot_product_attention` (its fused CPU kernel, which it
uses only without dropout) and the eager matmul-softmax-matmul path; mtl_jax as the trainer
compiles it (its XLA options, `mtl_jax.models.dropout`). Every row is also timed without
dropout (rate 0), where PyTorch's fused kernel applies.

Needs jax and torch in one environment (as benchmarks/gemm_reference.py):
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 /tmp/torch-venv/bin/python \
      benchmarks/attention_reference.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.gemm_reference import timed
from mtl_jax import machine

try:
  import jax
  import jax.numpy as jnp
  import torch
except ImportError as e:
  sys.exit(f"{e.name} is not installed here: this comparison needs jax and torch (docstring)")


def jax_fn(rate: float, batch: int, length: int, heads: int, head_dim: int):
  """Forward and the gradients of q, k, v, compiled as the trainer compiles its step."""
  from mtl_jax import xla_options
  from mtl_jax.models.dropout import dropout

  def attention(q, k, v, mask_bias, key):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    probs = dropout(jax.nn.softmax(scores + mask_bias, axis=-1), rate, key)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

  def loss(q, k, v, mask_bias, key, cotangent):
    return jnp.sum(attention(q, k, v, mask_bias, key) * cotangent)

  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q, k, v, cotangent = (jax.random.normal(kk, (batch, length, heads, head_dim)) for kk in keys[:4])
  args = (q, k, v, jnp.zeros((batch, 1, 1, length)), keys[4], cotangent)
  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(*args).compile(compiler_options=xla_options.train_step_options() or {})
  return lambda: jax.block_until_ready(compiled(*args))


def torch_fn(fused: bool, rate: float, batch: int, length: int, heads: int, head_dim: int):
  """Forward and backward as a training BertModel's attention runs them (heads-major)."""
  q, k, v = (torch.randn(batch, heads, length, head_dim, requires_grad=True) for _ in range(3))
  mask, cotangent = torch.zeros(batch, 1, 1, length), torch.randn(batch, heads, length, head_dim)
  functional = torch.nn.functional

  def run():
    if fused:
      out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=rate)
    else:
      probs = (q @ k.transpose(-1, -2) / head_dim**0.5 + mask).softmax(-1)
      out = functional.dropout(probs, rate) @ v
    out.backward(cotangent)

  return run


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=3 * 64, help="sequences: tasks x per task")
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  shape = (args.batch, args.length, args.heads, args.head_dim)
  fns = {}
  for rate in (0.1, 0.0):
    fns[("mtl_jax (XLA)", rate)] = jax_fn(rate, *shape)
    fns[("PyTorch scaled_dot_product_attention", rate)] = torch_fn(True, rate, *shape)
    fns[("PyTorch eager (matmul, softmax, matmul)", rate)] = torch_fn(False, rate, *shape)
  for fn in fns.values():
    fn()  # Warm-up.
  times = {name: [] for name in fns}
  start = machine.cpu_times()
  for _ in range(args.rounds):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  print(machine.machine_line(None, ("jax", "jaxlib", "torch")))
  print(
    f"attention core of one layer, forward + backward: {args.batch} sequences x "
    f"{args.length} tokens, {args.heads} heads x {args.head_dim}, f32, {args.threads} "
    f"threads; median of {args.rounds} interleaved rounds\n"
  )
  print("| implementation | dropout 0.1: ms a layer | s a step | no dropout: ms a layer |")
  print("|---|---|---|---|")
  for name in dict.fromkeys(name for name, _ in fns):
    with_dropout, without = (statistics.median(times[(name, r)]) for r in (0.1, 0.0))
    print(
      f"| {name} | {with_dropout * 1e3:.0f} | {with_dropout * args.layers:.2f} | "
      f"{without * 1e3:.0f} |"
    )
  print(machine.steal_line(start, machine.cpu_times()))


if __name__ == "__main__":
  main()
