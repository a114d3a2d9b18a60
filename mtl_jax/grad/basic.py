"""Plain combinations: sum, mean, fixed weights, random loss weighting."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _base, _tree


def _reduce(fn, num_tasks, name):
  def init_fn(params):
    del params
    return _tree.EmptyState(stats={})

  def update_fn(updates, state, params=None):
    _tree.checked_num_tasks(updates, params, num_tasks, name)
    return jax.tree.map(fn, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def sum_tasks(num_tasks: int | None = None) -> optax.GradientTransformation:
  """Sum over the task axis: the gradient of the summed loss ``sum_i L_i``.

  Args:
    num_tasks: optional; only checked against the task axis.

  Returns:
    An ``optax.GradientTransformation`` mapping ``[T, *shape]`` leaves to
    ``[*shape]`` leaves.

  Example:
    >>> tx = optax.chain(sum_tasks(), optax.adamw(1e-3))
  """
  return _reduce(lambda u: jnp.sum(u, axis=0), num_tasks, "sum_tasks")


def mean_tasks(num_tasks: int | None = None) -> optax.GradientTransformation:
  """Mean over the task axis (equal weighting ``1/T``, LibMTL's ``EW`` / torchjd ``Mean``).

  Args:
    num_tasks: optional; only checked against the task axis.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).
  """
  return _reduce(lambda u: jnp.mean(u, axis=0), num_tasks, "mean_tasks")


def fixed(weights: Sequence[float], num_tasks: int | None = None) -> optax.GradientTransformation:
  """Fixed linear scalarization ``sum_i weights[i] * g_i``.

  Args:
    weights: one weight per task (length T; not normalised).
    num_tasks: optional; only checked against the task axis.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(fixed([1.0, 0.5, 2.0]), optax.adamw(1e-3))
  """
  w = jnp.asarray(weights, jnp.float32)
  if w.ndim != 1:
    raise ValueError(f"fixed: weights must be a vector, got shape {w.shape}")
  if num_tasks is not None and w.shape[0] != num_tasks:
    raise ValueError(f"fixed: {w.shape[0]} weights for num_tasks={num_tasks}")

  def init_fn(params):
    del params
    return _tree.EmptyState(stats={})

  def update_fn(updates, state, params=None):
    t = _tree.checked_num_tasks(updates, params, None, "fixed")
    if t != w.shape[0]:
      raise ValueError(f"fixed: {w.shape[0]} weights but T={t} tasks")
    out = jax.tree.map(lambda u: jnp.tensordot(w.astype(u.dtype), u, axes=1), updates)
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def rlw(seed: int = 0, num_tasks: int | None = None) -> optax.GradientTransformation:
  """Random Loss Weighting (Lin et al. 2021, "Reasonable Effectiveness of Random
  Weighting: A Litmus Test for Multi-Task Learning", arXiv:2111.10603, RLW with
  the Normal distribution as in LibMTL's default).

  Every step draws ``lambda ~ N(0, I_T)`` from the state key and returns
  ``sum_i softmax(lambda)_i g_i`` (the weights sum to 1).

  Args:
    seed: seed of the ``jax.random`` key kept in the state.
    num_tasks: if given, the state records the drawn ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = optax.chain(rlw(seed=0), optax.adamw(1e-3))
  """

  def weights_fn(a, key):
    return jax.nn.softmax(jax.random.normal(key, (a.shape[0],), a.dtype)), {}

  return _base.weighting_transform(
    weights_fn, name="rlw", num_tasks=num_tasks, seed=seed, uses_key=True
  )
