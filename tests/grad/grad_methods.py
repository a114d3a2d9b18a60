"""The gradient methods the reference tests run, by name, and how they are run and scored.

Shared by test_grad_reference.py and test_grad_degenerate.py: one update of a method on a
single-leaf pytree holding a task-gradient stack G [T, D], compiled once per (method, T).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import grad as mtlgrad

FIXED_WEIGHTS = [1.0, 0.5, 2.0, 0.25, 1.5]  # grad.fixed's weights for T <= 5 tasks.

METHODS = {
  "sum": lambda t: mtlgrad.sum_tasks(),
  "mean": lambda t: mtlgrad.mean_tasks(),
  "fixed": lambda t: mtlgrad.fixed(FIXED_WEIGHTS[:t]),
  "mgda_exact": lambda t: mtlgrad.mgda(solver="exact"),
  "mgda_fw_none": lambda t: mtlgrad.mgda(solver="frank_wolfe"),
  "mgda_fw_l2": lambda t: mtlgrad.mgda(solver="frank_wolfe", normalization="l2"),
  "imtl_g": lambda t: mtlgrad.imtl_g(),
  "aligned_mtl_min": lambda t: mtlgrad.aligned_mtl("min"),
  "aligned_mtl_median": lambda t: mtlgrad.aligned_mtl("median"),
  "aligned_mtl_rmse": lambda t: mtlgrad.aligned_mtl("rmse"),
  "nash": lambda t: mtlgrad.nash_mtl(num_tasks=t),
  "nash_clip": lambda t: mtlgrad.nash_mtl(num_tasks=t, max_norm=1.0),
  "upgrad": lambda t: mtlgrad.upgrad(),
  "upgrad_noreg": lambda t: mtlgrad.upgrad(reg_eps=0.0),
  "dualproj": lambda t: mtlgrad.dualproj(),
  "cagrad_torchjd": lambda t: mtlgrad.cagrad(c=0.4, rescale=0, eps=0.0),
  **{
    f"cagrad_c{c}_r{r}": functools.partial(lambda t, c, r: mtlgrad.cagrad(c=c, rescale=r), c=c, r=r)
    for c, r in ((0.4, 0), (0.4, 1), (0.4, 2), (0.8, 1))
  },
  "pcgrad": lambda t: mtlgrad.pcgrad(seed=3),
  "pcgrad_tasks01": lambda t: mtlgrad.pcgrad(tasks=(0, 1)),
  **{
    f"against_t{k}": functools.partial(lambda t, k: mtlgrad.pcgrad_against_sum(target=k), k=k)
    for k in range(3)
  },
}


@functools.cache
def compiled(name: str, t: int):
  """(the transform, its jitted update) for `t` tasks."""
  tx = METHODS[name](t)
  return tx, jax.jit(tx.update)


def run(name: str, g: np.ndarray) -> np.ndarray:
  """One update of the method on G [T, D] (float32)."""
  tx, update = compiled(name, g.shape[0])
  state = tx.init({"x": jnp.zeros(g.shape[1], jnp.float32)})
  out, _ = update({"x": jnp.asarray(g, jnp.float32)}, state)
  return np.asarray(out["x"])


def err(out, ref, g) -> float:
  """max|ours - ref| / max(1, max|G|): float32 against float64, relative to the input scale."""
  return float(np.max(np.abs(np.asarray(out, np.float64) - ref)) / max(1.0, np.abs(g).max()))
