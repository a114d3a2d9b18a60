"""Builders shared by the methods that combine the task rows with weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import optax

from mtl_jax.grad import _tree


class WeightingState(NamedTuple):
  """State of a stateless (or key-only) weighting method.

  Attributes:
    key: ``jax.random`` key (uint32[2]), split at every update; unused by
      deterministic methods.
    stats: dict of per-task diagnostics (``{}`` unless ``num_tasks`` given).
  """

  key: jax.Array
  stats: dict


# weights_fn(a [T,T], key) -> (weights [T], extra stats dict)
WeightsFn = Callable[[jax.Array, jax.Array], tuple]


def weighting_transform(
  weights_fn: WeightsFn,
  *,
  name: str,
  num_tasks: int | None = None,
  seed: int = 0,
  stat_names: Sequence[str] = ("task_weights",),
  uses_key: bool = False,
) -> optax.GradientTransformation:
  """Transform returning ``sum_i w_i g_i`` with ``w = weights_fn(G G^T, key)``.

  ``weights_fn`` also returns a dict of extra stats (keys among
  ``stat_names``); ``task_weights`` is filled with ``w`` automatically.
  The key is split (and a subkey passed) only if ``uses_key``; otherwise
  ``weights_fn`` receives ``None``.
  """
  stat_names = tuple(stat_names)

  def init_fn(params):
    del params
    return WeightingState(
      key=jax.random.PRNGKey(seed), stats=_tree.task_stats(num_tasks, stat_names)
    )

  def update_fn(updates, state, params=None):
    if not jax.tree.leaves(updates):
      return updates, state
    _tree.checked_num_tasks(updates, params, num_tasks, name)
    key, sub = jax.random.split(state.key) if uses_key else (state.key, None)
    w, extra = weights_fn(_tree.gram_tree(updates), sub)
    stats = _tree.fill_stats(state.stats, task_weights=w, **extra)
    return _tree.combine_tree(w, updates), WeightingState(key=key, stats=stats)

  return optax.GradientTransformation(init_fn, update_fn)
