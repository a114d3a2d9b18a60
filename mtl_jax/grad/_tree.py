"""Shared plumbing: stacked per-task pytrees <-> one ``[T, D]`` matrix.

Every method in :mod:`mtl_jax.grad` receives ``updates`` whose leaves have a
leading task axis (``[T, *param.shape]``). The papers define the surgery on the
whole trainable vector, so all leaves are flattened into one matrix ``G`` of
shape ``[T, D]`` (``D`` = total number of parameters), the method works on
``G`` (mostly through its ``T x T`` Gram matrix ``G @ G.T``), and the
combined ``[D]`` vector is cut back into the parameter pytree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def num_tasks_of(updates: Any) -> int:
  """Static number of tasks ``T`` (leading axis of every leaf)."""
  leaves = jax.tree.leaves(updates)
  if not leaves:
    raise ValueError("per-task updates have no leaves")
  t = leaves[0].shape[0] if leaves[0].ndim else None
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != t:
      raise ValueError(
        "every leaf of the per-task updates needs the same leading task "
        f"axis; got shapes {[l.shape for l in leaves]}"
      )
  return int(t)


def checked_num_tasks(updates: Any, params: Any, num_tasks: int | None, name: str) -> int:
  """T of the per-task `updates`, checked against the method's `num_tasks` and, when the
  params come along with the same tree structure, against their shapes: updates without
  a task axis whose leading sizes happen to agree would otherwise be combined silently."""
  t = num_tasks_of(updates)
  if num_tasks is not None and t != num_tasks:
    raise ValueError(
      f"{name}: built with num_tasks={num_tasks} but the updates have a task axis of size {t}"
    )
  if params is not None and jax.tree.structure(params) == jax.tree.structure(updates):
    paths_and_updates = jax.tree_util.tree_flatten_with_path(updates)[0]
    for (path, u), p in zip(paths_and_updates, jax.tree.leaves(params)):
      if u.shape[1:] != jnp.shape(p):
        raise ValueError(
          f"{name}: per-task updates need the shape [T, *param.shape]; at "
          f"{jax.tree_util.keystr(path)} the update is {u.shape} for a param of shape "
          f"{jnp.shape(p)} (T={t}): stack one gradient per task, e.g. with jax.vmap"
        )
  return t


def tasks_to_matrix(updates: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """Flatten stacked per-task updates into ``G`` [T, D] (all leaves together).

  Returns ``(G, unflatten)`` where ``unflatten(v)`` maps a ``[D]`` vector back to
  a pytree with the structure of ``updates`` and the *unstacked* leaf shapes
  (``leaf.shape[1:]``) and dtypes. ``G`` uses the promoted dtype of the leaves.
  """
  leaves, treedef = jax.tree.flatten(updates)
  t = num_tasks_of(updates)
  shapes = [l.shape[1:] for l in leaves]
  dtypes = [l.dtype for l in leaves]
  sizes = [int(l.size // t) for l in leaves]
  dtype = compute_dtype(*dtypes)
  g = jnp.concatenate([l.reshape(t, -1).astype(dtype) for l in leaves], axis=1)

  def unflatten(v: jax.Array) -> Any:
    out, start = [], 0
    for shape, size, dt in zip(shapes, sizes, dtypes):
      out.append(v[start : start + size].reshape(shape).astype(dt))
      start += size
    return jax.tree.unflatten(treedef, out)

  return g, unflatten


def gram_tree(updates: Any) -> jax.Array:
  """Gram matrix ``G G^T`` [T, T] of the flattened per-task updates.

  Equal to ``gram(tasks_to_matrix(updates)[0])`` but summed leaf by leaf, so the
  ``[T, D]`` matrix is never materialised (it would double the memory of the
  stacked gradients for a BERT-sized model).
  """
  t = num_tasks_of(updates)
  leaves = jax.tree.leaves(updates)
  dtype = compute_dtype(*[l.dtype for l in leaves])
  return sum(gram(l.reshape(t, -1).astype(dtype)) for l in leaves)


def gram_groups(updates: Any, labels: Any) -> dict[str, jax.Array]:
  """Per-group Gram matrices ``{group: G_g G_g^T}`` [T, T] of the per-task updates.

  ``labels`` has the structure of ``updates`` (or is a callable applied to it) with a
  group name (str) per leaf, or ``None`` for leaves left out. Each leaf's ``[T, T]``
  block is what :func:`gram_tree` adds up, so the groups' matrices sum to ``gram_tree``
  of the labelled leaves (to float rounding: only the order of the sum differs).
  """
  labels = labels(updates) if callable(labels) else labels
  t = num_tasks_of(updates)
  leaves, treedef = jax.tree.flatten(updates)
  dtype = compute_dtype(*[l.dtype for l in leaves])
  names = treedef.flatten_up_to(labels)
  out: dict[str, jax.Array] = {}
  for leaf, name in zip(leaves, names):
    if name is None:
      continue
    a = gram(leaf.reshape(t, -1).astype(dtype))
    out[name] = out[name] + a if name in out else a
  return out


def combine_tree(weights: jax.Array, updates: Any) -> Any:
  """``sum_i weights[i] * updates[i]`` leaf by leaf (task axis removed)."""

  def one(l):
    dt = compute_dtype(l.dtype)
    return jnp.tensordot(
      weights.astype(dt), l.astype(dt), axes=1, precision=jax.lax.Precision.HIGHEST
    ).astype(l.dtype)

  return jax.tree.map(one, updates)


def compute_dtype(*dtypes) -> jnp.dtype:
  """At least float32 (bf16/fp16 gradients are combined in float32)."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


GRAM_BLOCKS = 8


def gram(g: jax.Array) -> jax.Array:
  """``G @ G.T`` at full precision (the T x T matrix of dot products).

  Each row of ``g`` is cut into ``GRAM_BLOCKS`` pieces and ``G G^T`` is the sum of the
  diagonal blocks of the ``[T * 8, T * 8]`` product of the pieces. Why not one
  ``[T, D] x [D, T]`` dot: compiled as the train step is (`mtl_jax.runtime.xla_options`), XLA:CPU
  runs a dot with so few rows as one long running sum, which for the bundled model's
  word-embedding gradient (D = 11.7M) was 2% off in float32 (commit 037325b;
  BENCHMARKS.md, "Measured and not kept").
  With 24 rows it is a blocked matrix product, accurate to float rounding, and still
  bound by reading ``g`` once (the extra FLOPs are free).
  """
  t, d = g.shape
  g = jnp.pad(g, ((0, 0), (0, -d % GRAM_BLOCKS)))  # A no-op when D divides evenly.
  pieces = g.reshape(t * GRAM_BLOCKS, -1)
  blocks = jnp.matmul(pieces, pieces.T, precision=jax.lax.Precision.HIGHEST)
  a = jnp.trace(blocks.reshape(t, GRAM_BLOCKS, t, GRAM_BLOCKS), axis1=1, axis2=3)
  return 0.5 * (a + a.T)


def changed_norm(a: jax.Array, coeffs: jax.Array) -> jax.Array:
  """Per-task ``|| g_i_final - g_i ||`` when ``g_i_final = sum_k coeffs[i,k] g_k``.

  Computed from the Gram matrix ``a``: no pass over ``D``.
  """
  delta = coeffs - jnp.eye(coeffs.shape[0], dtype=coeffs.dtype)
  sq = jnp.einsum("ik,kl,il->i", delta, a, delta)
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def task_stats(num_tasks: int | None, names: Sequence[str], dtype=jnp.float32) -> dict:
  """Zero-initialised per-task stats (``{}`` when ``num_tasks`` is unknown).

  Per-task stats have shape ``[T]``; optax state shapes must be known at
  ``init`` (which only sees the unstacked params), so they are kept only when
  the factory received ``num_tasks``.
  """
  if num_tasks is None:
    return {}
  return {n: jnp.zeros((num_tasks,), dtype) for n in names}


def fill_stats(template: dict, **values) -> dict:
  """Keep only the stats present in ``template`` (same keys, same dtypes)."""
  return {k: jnp.asarray(values[k]).astype(v.dtype).reshape(v.shape) for k, v in template.items()}


def task_mask(t: int, tasks: Sequence[int] | None) -> jax.Array:
  """Static bool [T] mask of the tasks taking part (all when ``tasks`` is None)."""
  if tasks is None:
    return jnp.ones((t,), bool)
  idx = sorted(set(int(i) for i in tasks))
  if any(i < 0 or i >= t for i in idx):
    raise ValueError(f"task indices {tuple(tasks)} out of range for T={t}")
  return jnp.zeros((t,), bool).at[jnp.array(idx, int)].set(True)


class EmptyState(NamedTuple):
  """State of stateless methods (still carries a ``stats`` dict)."""

  stats: dict
