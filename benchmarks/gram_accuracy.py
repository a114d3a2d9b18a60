"""How accurate is the T x T Gram matrix of long float32 gradient rows? (BENCHMARKS.md,
fifth session.) Prints, for a few row lengths D, the largest relative error over the
entries, against float64, of one [T, D] x [D, T] dot compiled with the trainer's XLA:CPU
options (`mtl_jax.xla_options`) and with XLA's defaults, and of `mtl_jax.grad._tree.gram`
with the trainer's options. Rows: normal numbers plus offsets 0.5, -0.3 and 1.

  python -m benchmarks.gram_accuracy   (from the repo root; ~1 GiB of memory)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import xla_options
from mtl_jax.grad import _tree

LENGTHS = (589_824, 4_000_000, 11_796_480, 16_777_216)  # An FFN kernel ... word embeddings.


def one_dot(g: jax.Array) -> jax.Array:
  """The Gram matrix as one [T, D] x [D, T] dot (mtl_jax before the blocked `_tree.gram`)."""
  return jnp.matmul(g, g.T, precision=jax.lax.Precision.HIGHEST)


def main() -> None:
  trainer = xla_options.train_step_options() or {}
  ways = {
    "one dot, trainer's options": (one_dot, trainer),
    "one dot, XLA's defaults": (one_dot, {}),
    "blocked (_tree.gram), trainer's options": (_tree.gram, trainer),
  }
  print("| way | " + " | ".join(f"D = {d:,}" for d in LENGTHS) + " |")
  print("| --- |" + " --- |" * len(LENGTHS))
  rows = {name: [] for name in ways}
  for d in LENGTHS:
    g = np.asarray(jax.random.normal(jax.random.PRNGKey(d), (3, d))) + np.array(
      [[0.5], [-0.3], [1]]
    )
    exact = g.astype(np.float64) @ g.astype(np.float64).T
    x = jnp.asarray(g, jnp.float32)
    for name, (fn, options) in ways.items():
      got = np.asarray(jax.jit(fn).lower(x).compile(compiler_options=options)(x), np.float64)
      rows[name].append(f"{(np.abs(got - exact) / np.abs(exact)).max():.1e}")
  for name, errors in rows.items():
    print(f"| {name} | " + " | ".join(errors) + " |")


if __name__ == "__main__":
  main()
