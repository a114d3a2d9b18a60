"""Gradient-balancing weightings: IMTL-G, Aligned-MTL, Nash-MTL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _base, _solvers, _tree


def imtl_g(num_tasks: int | None = None) -> optax.GradientTransformation:
  """IMTL-G: the combination with equal projections on every task's unit gradient.

  Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Sec. 3.2
  (closed form of IMTL-G). Finds ``d = sum_i w_i g_i``, ``sum_i w_i = 1``, with
  ``d . u_i`` equal for all unit vectors ``u_i = g_i / ||g_i||``; on the Gram
  matrix this is ``w ∝ A^+ n`` (``n_i = ||g_i||``), the form of torchjd's
  ``IMTLG`` that also handles linearly dependent gradients (weights 0 when no
  combination has equal projections, e.g. ``g, -g``). Solved on the cosine
  matrix (the paper's unit vectors), so that tasks whose norms differ by
  orders of magnitude stay exact in float32 (:func:`_solvers.imtl_g_weights`).
  The loss-scale part (IMTL-L) needs the losses and is not included.

  Args:
    num_tasks: if given, the state keeps ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(imtl_g(), optax.adamw(1e-3))
  """

  def weights_fn(a, key):
    del key
    return _solvers.imtl_g_weights(a), {}

  return _base.weighting_transform(weights_fn, name="imtl_g", num_tasks=num_tasks)


def aligned_mtl(
  scale_mode: str = "min", pref_vector: Sequence[float] | None = None, num_tasks: int | None = None
) -> optax.GradientTransformation:
  """Aligned-MTL: align the principal components of the gradient matrix.

  Senushkin et al., "Independent Component Alignment for Multi-Task
  Learning", CVPR 2023, Algorithm 1. With the eigendecomposition
  ``A = G G^T = V diag(lambda) V^T`` restricted to the numerical rank
  (``lambda > max(lambda) * T * eps``), the balance matrix is
  ``B = sqrt(lambda_s) V diag(lambda)^(-1/2) V^T`` and the output is
  ``G^T B w``: the rows of ``B G`` are orthogonal with equal norms
  ``sqrt(lambda_s)``. As torchjd's ``AlignedMTL`` (our reference): ``w`` is
  ``pref_vector`` (default ``1/T``, i.e. a mean; LibMTL's version uses
  ``w = 1``, a sum -- pass ``pref_vector=[1.0] * T``).

  Args:
    scale_mode: ``lambda_s`` = the smallest kept eigenvalue (``"min"``,
      paper/default), the lower median (``"median"``) or the mean (``"rmse"``).
    pref_vector: optional [T] task preferences.
    num_tasks: if given, the state keeps ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(aligned_mtl(), optax.adamw(1e-3))
  """
  if scale_mode not in ("min", "median", "rmse"):
    raise ValueError(f"aligned_mtl: scale_mode must be min/median/rmse, got {scale_mode!r}")

  def weights_fn(a, key):
    del key
    t = a.shape[0]
    w = (
      jnp.full((t,), 1.0 / t, a.dtype) if pref_vector is None else jnp.asarray(pref_vector, a.dtype)
    )
    lam, v = jnp.linalg.eigh(a)  # ascending
    tol = jnp.max(lam) * t * jnp.finfo(a.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    kept = jnp.where(keep, lam, 0.0)
    if scale_mode == "min":
      scale = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":  # torch.median: lower median
      scale = lam[jnp.clip(t - rank + (rank - 1) // 2, 0, t - 1)]
    else:
      scale = jnp.sum(kept) / jnp.maximum(rank, 1)
    inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    b = jnp.sqrt(jnp.maximum(scale, 0.0)) * (v * inv[None, :]) @ v.T
    b = jnp.where(rank == 0, jnp.eye(t, dtype=a.dtype), b)
    return b @ w, {}

  return _base.weighting_transform(weights_fn, name="aligned_mtl", num_tasks=num_tasks)


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`.

  Attributes:
    step: int32 update counter.
    alpha: float [T] last solved weights (reused between solves when
      ``update_weights_every > 1``).
    stats: ``task_weights`` [T] (after clipping) when ``num_tasks`` is given.
  """

  step: jax.Array
  alpha: jax.Array
  stats: dict


def nash_mtl(
  num_tasks: int, max_norm: float = 0.0, update_weights_every: int = 1, iters: int = 50
) -> optax.GradientTransformation:
  """Nash-MTL: the Nash bargaining solution of the tasks.

  Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022,
  eq. (2)/Algorithm 1: ``d = sum_i alpha_i g_i`` with ``alpha > 0`` solving
  ``(G G^T) alpha = 1 / alpha`` (element-wise). Instead of the paper's
  sequence of convex (cvxpy) problems, :func:`_solvers.nash_weights` solves the
  equation directly (damped Newton on a strictly convex potential), to
  machine precision. Note ``||d||^2 = T`` at the solution.

  Args:
    num_tasks: T (the state keeps the last ``alpha`` [T]).
    max_norm: if > 0, ``alpha`` is scaled so that ``||d|| <= max_norm``.
      The original code (AvivNavon/nash-mtl, ``max_norm=1.0``) and LibMTL's
      ``Nash_MTL`` call ``clip_grad_norm_(shared parameters, max_norm)`` AFTER
      ``backward``, so their update is clipped to norm 1; torchjd's ``NashMTL``
      clips ``d`` the same way (default 1.0). Default here 0 (no clipping),
      because the trainer already clips: ``train.grad_clip`` (default 1.0) is
      ``optax.clip_by_global_norm`` right after the method, which reproduces
      the original when every trainable leaf is shared, and otherwise clips
      the heads' gradients too. ``max_norm=1.0`` (``grad.kwargs.max_norm``)
      clips exactly what the original clips: the method's output, which under
      :func:`shared_only` is the shared parameters' update.
    update_weights_every: solve only every this many steps, reusing ``alpha``
      otherwise (paper's speed-up).
    iters: Newton iterations.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(nash_mtl(num_tasks=3), optax.adamw(1e-3))
  """

  def init_fn(params):
    del params
    return NashMTLState(
      step=jnp.zeros((), jnp.int32),
      alpha=jnp.ones((num_tasks,), jnp.float32),
      stats=_tree.task_stats(num_tasks, ("task_weights",)),
    )

  def update_fn(updates, state, params=None):
    if not jax.tree.leaves(updates):
      return updates, state
    _tree.checked_num_tasks(updates, params, num_tasks, "nash_mtl")
    a = _tree.gram_tree(updates)
    fresh = _solvers.nash_weights(a, iters).astype(state.alpha.dtype)
    alpha = jnp.where(state.step % update_weights_every == 0, fresh, state.alpha)
    w = alpha.astype(a.dtype)
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(w @ a @ w, 0.0))
      w = jnp.where(norm > max_norm, w / jnp.where(norm > 0, norm, 1.0) * max_norm, w)
    stats = _tree.fill_stats(state.stats, task_weights=w)
    return (
      _tree.combine_tree(w, updates),
      NashMTLState(step=state.step + 1, alpha=alpha, stats=stats),
    )

  return optax.GradientTransformation(init_fn, update_fn)
