"""GradDrop: gradient sign dropout (Chen et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _tree


class GradDropState(NamedTuple):
  """State of :func:`graddrop`.

  Attributes:
    key: ``jax.random`` key (uint32[2]) for the uniform draws.
    stats: ``removed_norm`` [T] (norm of the dropped part of each task's
      gradient) and ``kept_fraction`` [T] (fraction of its nonzero coordinates
      kept), when ``num_tasks`` is given.
  """

  key: jax.Array
  stats: dict


def graddrop_combine(g: jax.Array, u: jax.Array, leak: jax.Array) -> jax.Array:
  """GradDrop on a [T, D] block with uniform draws ``u`` [D]; returns [D].

  ``P = (1 + sum_i g_i / sum_i |g_i|) / 2`` (positive sign purity, 1/2 where all
  gradients are 0); task ``i`` keeps coordinate ``k`` if ``P_k > u_k`` and
  ``g_ik > 0`` or ``P_k < u_k`` and ``g_ik < 0``; output
  ``sum_i (leak_i + (1 - leak_i) M_i) * g_i``.
  """
  return _graddrop(g, u, leak)[0]


def _graddrop(g, u, leak):
  den = jnp.sum(jnp.abs(g), axis=0)
  p = 0.5 * (1.0 + jnp.sum(g, axis=0) / jnp.where(den > 0, den, 1.0))
  m = ((p > u)[None] & (g > 0)) | ((p < u)[None] & (g < 0))
  lk = leak.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)
  kept = (lk + (1.0 - lk) * m) * g
  return jnp.sum(kept, axis=0), g - kept, m


def graddrop(
  leak: float | Sequence[float] = 0.0, seed: int = 0, num_tasks: int | None = None
) -> optax.GradientTransformation:
  """Gradient Sign Dropout (GradDrop).

  Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
  Gradient Sign Dropout", NeurIPS 2020, Algorithm 1 (lines 10-15, identity
  ``f``), applied per parameter coordinate (as torchjd's ``GradDrop``; the paper
  and LibMTL apply it to activation gradients at a chosen layer, which an
  optimizer transform cannot see): for each coordinate one sign is kept at
  random with probability given by the sign purity ``P``, see
  :func:`graddrop_combine`. Output scale: a sum over tasks. Uniform draws come
  from the state key (one per coordinate and step).

  Args:
    leak: scalar or per-task [T] leak in [0, 1] (1 = plain sum).
    seed: seed of the ``jax.random`` key in the state.
    num_tasks: if given, the state keeps ``removed_norm``/``kept_fraction`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(graddrop(leak=0.0), optax.adamw(1e-3))
  """

  def init_fn(params):
    del params
    return GradDropState(
      key=jax.random.PRNGKey(seed),
      stats=_tree.task_stats(num_tasks, ("removed_norm", "kept_fraction")),
    )

  def update_fn(updates, state, params=None):
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    t = _tree.checked_num_tasks(updates, params, num_tasks, "graddrop")
    lk = jnp.broadcast_to(jnp.asarray(leak, jnp.float32), (t,))
    key, sub = jax.random.split(state.key)
    outs, removed_sq, kept, nonzero = [], 0.0, 0.0, 0.0
    for leaf, k in zip(leaves, jax.random.split(sub, len(leaves))):
      u = jax.random.uniform(k, leaf.shape[1:], leaf.dtype)
      out, dropped, m = _graddrop(leaf, u, lk)
      outs.append(out)
      axes = tuple(range(1, leaf.ndim))
      removed_sq = removed_sq + jnp.sum(jnp.square(dropped.astype(jnp.float32)), axis=axes)
      kept = kept + jnp.sum(m, axis=axes)
      nonzero = nonzero + jnp.sum(leaf != 0, axis=axes)
    stats = _tree.fill_stats(
      state.stats, removed_norm=jnp.sqrt(removed_sq), kept_fraction=kept / jnp.maximum(nonzero, 1)
    )
    return jax.tree.unflatten(treedef, outs), GradDropState(key=key, stats=stats)

  return optax.GradientTransformation(init_fn, update_fn)
