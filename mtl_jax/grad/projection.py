"""Projection-based surgery: PCGrad, its "against the sum" variant, GradVac."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _tree

_STATS = ("removed_norm", "num_projections", "task_weights")


class PCGradState(NamedTuple):
  """State of :func:`pcgrad` / :func:`pcgrad_against_sum`.

  Attributes:
    key: ``jax.random`` key (uint32[2]) drawing the visiting orders.
    stats: ``removed_norm`` [T] (``||g_i - g_i^PC||``), ``num_projections`` [T]
      (how many projections task i received this step) and ``task_weights``
      [T] (the output is ``sum_k task_weights[k] g_k``); ``{}`` unless the
      factory received ``num_tasks``.
  """

  key: jax.Array
  stats: dict


def random_orders(key: jax.Array, t: int) -> jax.Array:
  """One fresh random permutation of ``range(t)`` per task: int [t, t]."""
  return jnp.argsort(jax.random.uniform(key, (t, t)), axis=1)


def pcgrad_coefficients(a: jax.Array, orders: jax.Array, active: jax.Array | None = None):
  """PCGrad on the Gram matrix, for given visiting orders.

  Algorithm 1 of Yu et al.: for each task ``i`` and each ``j != i`` in the order
  ``orders[i]`` (entries equal to ``i`` are skipped), if ``g_i^PC . g_j < 0``
  then ``g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j``, always against
  the ORIGINAL ``g_j``. With ``g_i^PC = sum_k C[i, k] g_k`` every dot product is
  read from ``a = G G^T``.

  Args:
    a: Gram matrix [T, T].
    orders: int [T, T]; row ``i`` is a permutation of ``range(T)``.
    active: optional bool [T]; only active tasks are projected, and only
      against other active tasks (targeted surgery). Default: all.

  Returns:
    ``(C, num_projections)``: coefficients [T, T] with ``g_i^PC = C[i] @ G``,
    and the int32 [T] count of projections applied to each task.
  """
  t = a.shape[0]
  if active is None:
    active = jnp.ones((t,), bool)
  eye = jnp.eye(t, dtype=a.dtype)

  def one_task(i, order):
    def step(carry, j):
      c, n = carry
      dot = c @ a[:, j]  # g_i^PC . g_j (original g_j)
      ajj = a[j, j]
      do = (j != i) & active[i] & active[j] & (dot < 0) & (ajj > 0)
      coef = jnp.where(do, dot / jnp.where(ajj > 0, ajj, 1.0), 0.0)
      return (c - coef * eye[j], n + do.astype(jnp.int32)), None

    (c, n), _ = jax.lax.scan(step, (eye[i], jnp.zeros((), jnp.int32)), order)
    return c, n

  return jax.vmap(one_task)(jnp.arange(t), orders)


def _reduce(c: jax.Array, reduction: str) -> jax.Array:
  w = jnp.sum(c, axis=0)
  return w / c.shape[0] if reduction == "mean" else w


def _check_reduction(reduction: str) -> None:
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _transform(coeff_fn, name, reduction, num_tasks, seed):
  def init_fn(params):
    del params
    return PCGradState(key=jax.random.PRNGKey(seed), stats=_tree.task_stats(num_tasks, _STATS))

  def update_fn(updates, state, params=None):
    if not jax.tree.leaves(updates):
      return updates, state
    t = _tree.checked_num_tasks(updates, params, num_tasks, name)
    key, sub = jax.random.split(state.key)
    a = _tree.gram_tree(updates)
    c, n = coeff_fn(a, sub, t)
    w = _reduce(c, reduction)
    stats = _tree.fill_stats(
      state.stats, removed_norm=_tree.changed_norm(a, c), num_projections=n, task_weights=w
    )
    return _tree.combine_tree(w, updates), PCGradState(key=key, stats=stats)

  return optax.GradientTransformation(init_fn, update_fn)


def pcgrad(
  reduction: str = "sum",
  seed: int = 0,
  tasks: Sequence[int] | None = None,
  num_tasks: int | None = None,
) -> optax.GradientTransformation:
  """Projecting Conflicting Gradients (PCGrad).

  Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
  Algorithm 1. For each task ``i`` the other tasks ``j != i`` are visited in a
  fresh random order (a new permutation per ``i`` and per step, drawn from the
  state key); whenever ``g_i^PC . g_j < 0``::

      g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 * g_j

  The projection is sequential in ``g_i^PC`` but always against the original,
  unmodified ``g_j``. The result is ``sum_i g_i^PC`` (``reduction="sum"``: the
  paper's update, same scale as the summed loss) or its mean. Dot products are
  over the whole flattened update (all leaves together).

  Args:
    reduction: ``"sum"`` (default) or ``"mean"`` over tasks.
    seed: seed of the ``jax.random`` key in the state.
    tasks: optional subset of task indices taking part in the surgery
      (targeted surgery): only these are projected, and only against each
      other; the remaining tasks pass through unchanged and are summed in.
    num_tasks: if given, the state carries per-task stats (see
      :class:`PCGradState`); must equal the task axis.

  Returns:
    An ``optax.GradientTransformation`` mapping per-task updates (leaves
    ``[T, *shape]``) to one update (leaves ``[*shape]``).

  Example:
    >>> tx = optax.chain(pcgrad(num_tasks=3), optax.adamw(1e-3))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(per_task_grads, state, params)
  """
  _check_reduction(reduction)
  tasks = None if tasks is None else tuple(int(i) for i in tasks)

  def coeff_fn(a, key, t):
    return pcgrad_coefficients(a, random_orders(key, t), _tree.task_mask(t, tasks))

  return _transform(coeff_fn, "pcgrad", reduction, num_tasks, seed)


def pcgrad_against_sum(
  target: int | Sequence[int] = 0, reduction: str = "sum", num_tasks: int | None = None
) -> optax.GradientTransformation:
  """Targeted surgery: project task ``target`` against the sum of the others.

  With ``s = sum_{j != target} g_j`` (original gradients), if
  ``g_target . s < 0`` then::

      g_target <- g_target - (g_target . s) / ||s||^2 * s

  so the modified ``g_target`` no longer conflicts with the combined update of
  the other tasks; the other tasks are unchanged. The output is the sum (or
  mean) of all task gradients after this single projection. Deterministic (no
  random order). With several targets, each is projected independently against
  the sum of the ORIGINAL gradients of all tasks other than itself. For T=2
  this equals PCGrad restricted to projecting the target only.

  Args:
    target: task index (or indices) to project.
    reduction: ``"sum"`` (default) or ``"mean"``.
    num_tasks: if given, the state carries ``removed_norm`` / ``num_projections``
      / ``task_weights`` [T] (see :class:`PCGradState`).

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(pcgrad_against_sum(target=2), optax.adamw(1e-3))
  """
  _check_reduction(reduction)
  targets = (target,) if isinstance(target, int) else tuple(int(i) for i in target)

  def coeff_fn(a, key, t):
    del key
    mask = _tree.task_mask(t, targets)
    eye = jnp.eye(t, dtype=a.dtype)
    rows, counts = [], []
    for i in range(t):
      others = 1.0 - eye[i]  # s = others @ G
      dot = a[i] @ others
      ss = others @ a @ others
      do = mask[i] & (dot < 0) & (ss > 0)
      coef = jnp.where(do, dot / jnp.where(ss > 0, ss, 1.0), 0.0)
      rows.append(eye[i] - coef * others)
      counts.append(do.astype(jnp.int32))
    return jnp.stack(rows), jnp.stack(counts)

  return _transform(coeff_fn, "pcgrad_against_sum", reduction, num_tasks, 0)


class GradVacState(NamedTuple):
  """State of :func:`gradvac`.

  Attributes:
    key: ``jax.random`` key (uint32[2]) drawing the visiting orders.
    phi: float [T, T] EMA targets ``phi_hat[i, j]`` of the cosine between
      ``g_i`` (as modified so far) and ``g_j``.
    stats: ``removed_norm`` [T] (``||g_i - g_i^final||``), ``num_projections``
      [T] (number of corrections) and ``task_weights`` [T], when
      ``num_tasks`` is given (it always is for GradVac).
  """

  key: jax.Array
  phi: jax.Array
  stats: dict


def gradvac_coefficients(
  a: jax.Array, phi: jax.Array, orders: jax.Array, beta: float, eps: float = 1e-8
):
  """GradVac on the Gram matrix for given visiting orders.

  For each task ``i`` and each ``j != i`` in ``orders[i]``, with
  ``phi_ij = cos(g_i^PC, g_j)`` (``g_i^PC`` modified so far, ``g_j`` original):
  if ``phi_ij < phi_hat_ij``::

      g_i^PC += ||g_i^PC|| (phi_hat sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat^2))
                / (||g_j|| sqrt(1 - phi_hat^2) + eps) * g_j

  and, in every case, ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``.

  Returns:
    ``(C, num_corrections, new_phi)`` with ``g_i^PC = C[i] @ G``.
  """
  t = a.shape[0]
  eye = jnp.eye(t, dtype=a.dtype)

  def one_task(i, order, phi_i):  # task i only reads/writes phi[i, :]
    def step(carry, j):
      c, cg, ph, n = carry
      valid = j != i
      norm_i = jnp.sqrt(jnp.maximum(cg @ c, 0.0))
      norm_j = jnp.sqrt(jnp.maximum(a[j, j], 0.0))
      p = cg[j] / (norm_i * norm_j + eps)
      hat = ph[j]
      s_p = jnp.sqrt(jnp.maximum(1.0 - p * p, 0.0))
      s_h = jnp.sqrt(jnp.maximum(1.0 - hat * hat, 0.0))
      w = norm_i * (hat * s_p - p * s_h) / (norm_j * s_h + eps)
      do = valid & (p < hat)
      w = jnp.where(do, w, 0.0)
      ph = ph.at[j].set(jnp.where(valid, (1 - beta) * hat + beta * p, hat))
      return (c + w * eye[j], cg + w * a[j], ph, n + do.astype(jnp.int32)), None

    init = (eye[i], a[i], phi_i, jnp.zeros((), jnp.int32))
    (c, _, ph, n), _ = jax.lax.scan(step, init, order)
    return c, n, ph

  return jax.vmap(one_task)(jnp.arange(t), orders, phi)


def gradvac(
  num_tasks: int, beta: float = 0.01, eps: float = 1e-8, seed: int = 0
) -> optax.GradientTransformation:
  """Gradient Vaccine (GradVac).

  Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
  Optimization in Massively Multilingual Models", ICLR 2021, Algorithm 1
  (whole-model variant): like PCGrad, but instead of only removing conflicts
  it raises the cosine of ``(g_i^PC, g_j)`` up to an EMA target ``phi_hat_ij``
  kept in the state (see :func:`gradvac_coefficients`). The EMA is updated for
  every visited pair (paper; torchjd's ``GradVac``; LibMTL 1.1.5 updates it only
  when a correction is made). Orders are drawn from the state key as in
  :func:`pcgrad`; the output is the SUM of the modified gradients.

  Args:
    num_tasks: T (the EMA targets are a [T, T] state).
    beta: EMA rate (paper: 1e-2).
    eps: added to the denominators (as torchjd).
    seed: seed of the ``jax.random`` key in the state.

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(gradvac(num_tasks=3, beta=0.01), optax.adamw(1e-3))
  """

  def init_fn(params):
    del params
    return GradVacState(
      key=jax.random.PRNGKey(seed),
      phi=jnp.zeros((num_tasks, num_tasks), jnp.float32),
      stats=_tree.task_stats(num_tasks, _STATS),
    )

  def update_fn(updates, state, params=None):
    if not jax.tree.leaves(updates):
      return updates, state
    t = _tree.checked_num_tasks(updates, params, num_tasks, "gradvac")
    key, sub = jax.random.split(state.key)
    a = _tree.gram_tree(updates)
    c, n, phi = gradvac_coefficients(a, state.phi.astype(a.dtype), random_orders(sub, t), beta, eps)
    w = jnp.sum(c, axis=0)
    stats = _tree.fill_stats(
      state.stats, removed_norm=_tree.changed_norm(a, c), num_projections=n, task_weights=w
    )
    return (
      _tree.combine_tree(w, updates),
      GradVacState(key=key, phi=phi.astype(state.phi.dtype), stats=stats),
    )

  return optax.GradientTransformation(init_fn, update_fn)
