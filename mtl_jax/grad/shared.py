"""Apply a multi-task method to the shared parameters only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from mtl_jax.grad import basic

_SHARED, _TASK, _OWN = "shared", "task_specific", "own_slices"


def shared_only(
  method: optax.GradientTransformation,
  is_shared: Any | Callable[[Any], Any],
  own_slices: Any | Callable[[Any], Any] | None = None,
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

  A leaf with a task axis of its own (``own_slices``: a parameter stacked
  ``[T, ...]`` whose slice ``t`` only task ``t`` uses, as the task-specific
  copies of :mod:`mtl_jax.models.task_specific`) has a ``[T, T, ...]`` stack
  of per-task gradients that is zero but for its diagonal, so the step hands
  over that diagonal alone, ``[T, ...]`` like the leaf (row ``t``: task
  ``t``'s gradient of slice ``t``). It already is the leaf's update, and
  passes through unchanged: each slice gets its own task's gradient, as a head.

  Implemented with ``optax.partition`` (``multi_transform``); the combined
  output has all leaves, without the task axis.

  Args:
    method: a per-task method of :mod:`mtl_jax.grad` (e.g. ``pcgrad()``).
    is_shared: pytree of bools with the structure of the params (True =
      shared), or a callable returning it. The callable is applied to the
      params at ``init`` and to the stacked per-task updates at ``update``, so
      it must depend on the tree structure / paths only, not on shapes.
    own_slices: pytree of bools (or a callable, as ``is_shared``), True for
      the leaves whose per-task gradients arrive as their diagonal (above);
      None: no such leaf.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> is_shared = lambda p: {"encoder": jax.tree.map(lambda _: True, p["encoder"]),
    ...                        "heads": jax.tree.map(lambda _: False, p["heads"])}
    >>> tx = optax.chain(shared_only(pcgrad(), is_shared), optax.adamw(1e-3))
  """

  def labels(tree):
    mask = is_shared(tree) if callable(is_shared) else is_shared
    own = own_slices(tree) if callable(own_slices) else own_slices
    if own is None:
      own = jax.tree.map(lambda _: False, mask)
    return jax.tree.map(lambda s, o: _OWN if o else (_SHARED if s else _TASK), mask, own)

  partition = getattr(optax, "partition", None) or optax.multi_transform
  return partition(
    {
      _SHARED: _unless_empty(method),
      _TASK: _unless_empty(basic.sum_tasks()),
      _OWN: optax.identity(),
    },
    labels,
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
