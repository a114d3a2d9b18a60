"""Diagnostics: per-task gradient geometry and the stats kept by the methods."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mtl_jax.grad import _tree


def task_gradient_stats(per_task_grads: Any, eps: float = 1e-12) -> dict:
  """Geometry of the per-task gradients (jit-able).

  All leaves are flattened together, so norms and cosines are over the whole
  trainable vector. Computed from the ``T x T`` Gram matrix only.

  Args:
    per_task_grads: pytree whose leaves have a leading task axis ``[T, ...]``.
    eps: guards the cosine of zero gradients (their cosine is 0).

  Returns:
    dict with
      ``grad_norm`` [T]: ``||g_i||``;
      ``cosine`` [T, T]: ``g_i . g_j / (||g_i|| ||g_j||)`` (diagonal 1 for
      nonzero gradients);
      ``conflict`` float32 [T, T]: 1.0 where ``cosine < 0`` else 0.0 (diagonal
      0; float so that it can be logged/averaged like the other metrics);
      ``num_conflicting_pairs`` int32 scalar: number of unordered pairs
      ``i < j`` with ``cosine < 0``;
      ``sum_norm`` scalar: ``||sum_i g_i||``.

  Example:
    >>> stats = jax.jit(task_gradient_stats)(per_task_grads)
    >>> stats["cosine"][0, 1]
  """
  return gram_stats(_tree.gram_tree(per_task_grads), eps)


def gram_stats(a, eps: float = 1e-12) -> dict:
  """:func:`task_gradient_stats` from the Gram matrix ``a`` [T, T] of the gradients."""
  norm, cosine = cosines(a, eps)
  t = a.shape[0]
  conflict = (cosine < 0) & ~jnp.eye(t, dtype=bool)
  pairs = jnp.sum(jnp.triu(conflict, k=1)).astype(jnp.int32)
  return {
    "grad_norm": norm,
    "cosine": cosine,
    "conflict": conflict.astype(jnp.float32),
    "num_conflicting_pairs": pairs,
    "sum_norm": jnp.sqrt(jnp.maximum(jnp.sum(a), 0.0)),
  }


def cosines(a, eps: float = 1e-12):
  """(norms [T], cosines [T, T]) from a Gram matrix ``a`` (zero gradients: cosine 0)."""
  norm = jnp.sqrt(jnp.maximum(jnp.diag(a), 0.0))
  denom = norm[:, None] * norm[None, :]
  return norm, jnp.where(denom > eps, a / jnp.where(denom > eps, denom, 1.0), 0.0)


def group_gradient_stats(per_task_grads: Any, labels: Any, eps: float = 1e-12) -> tuple:
  """Geometry of the per-task gradients per parameter group, and over all groups (jit-able).

  Args:
    per_task_grads: pytree whose leaves have a leading task axis ``[T, ...]``.
    labels: pytree of group names (str) with its structure, ``None`` for leaves left out
      (e.g. ``mtl_jax.models.multitask.param_groups``), or a callable returning it.
    eps: guards the cosine of zero gradients (their cosine is 0).

  Returns:
    ``(groups, overall)``: ``groups[name] = {"grad_norm": [T], "cosine": [T, T]}`` over
    that group's leaves alone, and ``overall``, :func:`task_gradient_stats` over every
    labelled leaf, from the sum of the groups' Gram matrices (no second pass over the
    gradients: each leaf's ``[T, T]`` block is computed once).
  """
  grams = _tree.gram_groups(per_task_grads, labels)
  groups = {}
  for name, a in grams.items():
    norm, cos = cosines(a, eps)
    groups[name] = {"grad_norm": norm, "cosine": cos}
  return groups, gram_stats(sum(grams.values()), eps)


def _collect(node: Any, path: tuple, out: list) -> None:
  if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple
    fields = node._fields
    if "stats" in fields and isinstance(node.stats, dict):
      out.append((path + (type(node).__name__,), node.stats))
    for f in fields:
      if f != "stats":
        _collect(getattr(node, f), path + (f,), out)
  elif isinstance(node, (tuple, list)):
    for i, x in enumerate(node):
      _collect(x, path + (str(i),), out)
  elif isinstance(node, dict):
    for k, x in node.items():
      _collect(x, path + (str(k),), out)


def method_stats(state: Any) -> dict:
  """Flat dict of the surgery stats found anywhere in an optax state.

  Walks NamedTuples, tuples, lists and dicts (so ``optax.chain``,
  ``optax.partition`` / ``multi_transform``, ``optax.masked`` and
  :func:`shared_only` states are all searched) for the ``stats`` dicts that
  the methods of :mod:`mtl_jax.grad` keep in their state. Keys are the stat
  names (e.g. ``removed_norm``); if two methods report the same name, keys are
  prefixed with the state path (``"0/inner_states/shared/...:removed_norm"``).
  Methods without stats contribute nothing (empty dict overall).

  Args:
    state: any optax state (possibly nested).

  Returns:
    ``dict[str, jax.Array]``.

  Example:
    >>> tx = optax.chain(pcgrad(num_tasks=3), optax.adamw(1e-3))
    >>> _, state = tx.update(per_task_grads, tx.init(params), params)
    >>> method_stats(state)["removed_norm"]   # [3]
  """
  found: list = []
  _collect(state, (), found)
  names = [k for _, s in found for k in s]
  clash = {k for k in names if names.count(k) > 1}
  out = {}
  for path, stats in found:
    for k, v in stats.items():
      out[f"{'/'.join(path)}:{k}" if k in clash else k] = v
  return out
