"""Apply a multi-task method to the shared parameters only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from mtl_jax.grad import basic

_SHARED, _TASK = "shared", "task_specific"


def shared_only(
  method: optax.GradientTransformation, is_shared: Any | Callable[[Any], Any]
) -> optax.GradientTransformation:
  """Run ``method`` on the shared leaves and a plain task-sum on the others.

  Task-specific leaves (e.g. the head of task ``i``) have a nonzero gradient for
  their own task only. Letting them into the surgery would (a) change the dot
  products between tasks with directions no other task shares and (b) hand
  them pieces of other tasks' gradients through projections/weightings.
  Decision: the method sees only the shared leaves (its dot products, Gram
  matrix and stats are over the shared trunk), and every other leaf receives
  ``sum_t g_t`` -- i.e. the head of task ``i`` receives exactly task ``i``'s
  own gradient, whatever the scale convention (sum/mean) of ``method``.

  Implemented with ``optax.partition`` (``multi_transform``); the combined
  output has all leaves, without the task axis.

  Args:
    method: a per-task method of :mod:`mtl_jax.grad` (e.g. ``pcgrad()``).
    is_shared: pytree of bools with the structure of the params (True =
      shared), or a callable returning it. The callable is applied to the
      params at ``init`` and to the stacked per-task updates at ``update``, so
      it must depend on the tree structure / paths only, not on shapes.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> is_shared = lambda p: {"encoder": jax.tree.map(lambda _: True, p["encoder"]),
    ...                        "heads": jax.tree.map(lambda _: False, p["heads"])}
    >>> tx = optax.chain(shared_only(pcgrad(), is_shared), optax.adamw(1e-3))
  """

  def labels(tree):
    mask = is_shared(tree) if callable(is_shared) else is_shared
    return jax.tree.map(lambda b: _SHARED if b else _TASK, mask)

  partition = getattr(optax, "partition", None) or optax.multi_transform
  return partition(
    {_SHARED: _unless_empty(method), _TASK: _unless_empty(basic.sum_tasks())}, labels
  )


def _unless_empty(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx`, or nothing when its partition has no leaf (probing: no shared leaf), since a
  method has no task axis to read from an empty tree."""
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    return tx.init(params) if jax.tree.leaves(params) else optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    if not jax.tree.leaves(updates):
      return updates, state
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
