"""Methods defined by a small convex program on the Gram matrix:
MGDA, CAGrad, UPGrad, DualProj."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _base, _solvers


def _pref(pref_vector, t, dtype):
  if pref_vector is None:
    return jnp.full((t,), 1.0 / t, dtype)
  p = jnp.asarray(pref_vector, dtype)
  if p.shape != (t,):
    raise ValueError(f"pref_vector has shape {p.shape}, expected ({t},)")
  return p


def mgda(
  normalization: str = "none", solver: str = "auto", num_tasks: int | None = None
) -> optax.GradientTransformation:
  """MGDA-UB: the min-norm point of the convex hull of the task gradients.

  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, eq. (3)/Algorithm 2 (MinNormSolver): returns
  ``sum_i w_i g_i`` with ``w = argmin_{w in simplex} ||sum_i w_i g_i||^2``
  (weights sum to 1: the scale of one task's gradient).

  Args:
    normalization: gradient normalization before solving, as LibMTL's
      ``mgda_gn``: ``"none"`` (default, as LibMTL) or ``"l2"`` (each ``g_i``
      divided by its norm; the output then combines the normalised
      gradients). ``"loss"``/``"loss+"`` need loss values and are not offered.
    solver: ``"exact"`` (face enumeration, exact for any T <= 10: the 2-task
      case is the closed-form line search), ``"frank_wolfe"`` (jit port of the
      reference MinNormSolver: best pair + Frank-Wolfe, stop at L1 change
      < 1e-5, 250 steps -- matches LibMTL's output, including its clamp of
      pair steps to [0.001, 0.999]), or ``"auto"`` (exact for T <= 8, else
      Frank-Wolfe).
    num_tasks: if given, the state keeps ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(mgda(), optax.adamw(1e-3))
  """
  if normalization not in ("none", "l2"):
    raise ValueError(f"mgda: normalization must be 'none' or 'l2', got {normalization!r}")
  if solver not in ("auto", "exact", "frank_wolfe"):
    raise ValueError(f"mgda: unknown solver {solver!r}")

  def weights_fn(a, key):
    del key
    t = a.shape[0]
    scale = jnp.ones((t,), a.dtype)
    if normalization == "l2":
      n = jnp.sqrt(jnp.maximum(jnp.diag(a), 0.0))
      scale = 1.0 / jnp.where(n > 0, n, 1.0)
      a = a * scale[:, None] * scale[None, :]
    exact = solver == "exact" or (solver == "auto" and t <= 8)
    w = _solvers.simplex_min_norm(a) if exact else _solvers.frank_wolfe_min_norm(a)
    return w * scale, {}

  return _base.weighting_transform(weights_fn, name="mgda", num_tasks=num_tasks)


def cagrad(
  c: float = 0.4, rescale: int = 1, eps: float = 1e-8, num_tasks: int | None = None
) -> optax.GradientTransformation:
  """Conflict-Averse Gradient descent (CAGrad).

  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, Algorithm 1 / eq. (4), as in the reference code
  (Cranial-XIX/CAGrad, also LibMTL): with ``g0`` the MEAN gradient,
  ``rho = c * sqrt(||g0||^2 + eps) + eps`` and

      w* = argmin_{w in simplex}  g_w . g0 + rho * sqrt(||g_w||^2 + eps),

  ``g_w = sum_i w_i g_i``, the update is ``d = g0 + rho / (||g_w*|| + eps) g_w*``,
  divided by ``1`` / ``1 + c^2`` / ``1 + c`` for ``rescale`` 0 / 1 / 2. The
  dual is solved exactly (face enumeration, :func:`_solvers.cagrad_dual`)
  instead of the reference's scipy SLSQP. Scale: that of the mean gradient.

  Args:
    c: radius of the ball around ``g0`` (relative to ``||g0||``).
    rescale: 0, 1 (reference default) or 2, see above.
    eps: the reference's stabilising epsilons (``1e-8``); ``0`` gives the
      plain formulas (as torchjd's ``CAGrad``, which equals ``rescale=0``).
    num_tasks: if given, the state keeps ``task_weights`` [T] (output =
      ``sum_i task_weights[i] g_i``) and ``dual_weights`` [T] (``w*``).

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(cagrad(c=0.4), optax.adamw(1e-3))
  """
  if rescale not in (0, 1, 2):
    raise ValueError(f"cagrad: rescale must be 0, 1 or 2, got {rescale!r}")
  if not c >= 0:  # The radius of a ball; 0 is the average gradient.
    raise ValueError(f"cagrad: c must be >= 0, got {c!r}")
  div = (1.0, 1.0 + c**2, 1.0 + c)[rescale]

  def weights_fn(a, key):
    del key
    t = a.shape[0]
    rho = c * jnp.sqrt(jnp.maximum(jnp.mean(a), 0.0) + eps) + eps
    w = _solvers.cagrad_dual(a, rho, eps)
    gw_norm = jnp.sqrt(jnp.maximum(w @ a @ w, 0.0))
    lmbda = jnp.where(
      gw_norm + eps > 0, rho / jnp.where(gw_norm + eps > 0, gw_norm + eps, 1.0), 0.0
    )
    weights = (jnp.full((t,), 1.0 / t, a.dtype) + lmbda * w) / div
    return weights, {"dual_weights": w}

  return _base.weighting_transform(
    weights_fn, name="cagrad", num_tasks=num_tasks, stat_names=("task_weights", "dual_weights")
  )


def _torchjd_gramian(a, norm_eps, reg_eps):
  tr = jnp.trace(a)
  a = jnp.where(tr < norm_eps, jnp.zeros_like(a), a / jnp.where(tr > 0, tr, 1.0))
  return a + reg_eps * jnp.eye(a.shape[0], dtype=a.dtype)


def upgrad(
  pref_vector: Sequence[float] | None = None,
  norm_eps: float = 1e-4,
  reg_eps: float = 1e-4,
  num_tasks: int | None = None,
) -> optax.GradientTransformation:
  """UPGrad (torchjd): average of each gradient projected onto the dual cone.

  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
  Definition of UPGrad (eq. 5) with the projection of Proposition 1: each
  ``g_i`` (scaled by ``pref_vector[i]``, default ``1/T``) is projected onto
  the dual cone ``{x : g_j . x >= 0 for all j}``; the output is the sum of the
  projections, i.e. their MEAN for the default preference (torchjd's
  convention). Projection weights solve ``min_v v^T A v s.t. v >= u`` on the
  Gram matrix, exactly (free-set enumeration) instead of torchjd's quadprog.
  As torchjd's default ``QuadprogProjector``, ``A`` is first divided by its
  trace (unless the trace is < ``norm_eps``) and ``reg_eps * I`` is added
  (``reg_eps=0`` gives the exact dual-cone projection).

  Args:
    pref_vector: optional [T] weights of the projected gradients.
    norm_eps: trace threshold of the Gram normalisation (torchjd default).
    reg_eps: ridge added to the normalised Gram matrix (torchjd default).
    num_tasks: if given, the state keeps ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = optax.chain(upgrad(), optax.adamw(1e-3))
  """

  def weights_fn(a, key):
    del key
    t = a.shape[0]
    u = jnp.diag(_pref(pref_vector, t, a.dtype))
    an = _torchjd_gramian(a, norm_eps, reg_eps)
    v = jax.vmap(lambda row: _solvers.dual_cone_weights(an, row))(u)
    return jnp.sum(v, axis=0), {}

  return _base.weighting_transform(weights_fn, name="upgrad", num_tasks=num_tasks)


def dualproj(
  pref_vector: Sequence[float] | None = None,
  norm_eps: float = 1e-4,
  reg_eps: float = 1e-4,
  num_tasks: int | None = None,
) -> optax.GradientTransformation:
  """DualProj (torchjd): the mean gradient projected onto the dual cone.

  Quinton & Rey 2024 (Jacobian Descent), the DualProj aggregator: project
  ``sum_i pref_i g_i`` (default: the mean) onto ``{x : g_j . x >= 0}``, same
  Gram normalisation/regularisation as :func:`upgrad`.

  Args:
    pref_vector: optional [T] weights (default ``1/T``).
    norm_eps: trace threshold of the Gram normalisation.
    reg_eps: ridge added to the normalised Gram matrix.
    num_tasks: if given, the state keeps ``task_weights`` [T].

  Returns:
    An ``optax.GradientTransformation`` (leaves ``[T, *shape]`` -> ``[*shape]``).
  """

  def weights_fn(a, key):
    del key
    t = a.shape[0]
    an = _torchjd_gramian(a, norm_eps, reg_eps)
    return _solvers.dual_cone_weights(an, _pref(pref_vector, t, a.dtype)), {}

  return _base.weighting_transform(weights_fn, name="dualproj", num_tasks=num_tasks)
