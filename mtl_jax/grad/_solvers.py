"""Small jit-able solvers on the T x T Gram matrix (no scipy inside jit).

For the small T of multi-task learning the constrained problems below are
solved EXACTLY by enumerating the ``2^T - 1`` candidate supports (faces of the
simplex / sets of free variables): on each face the KKT conditions are a
linear system (or, for CAGrad, a scalar quadratic), all faces are solved at
once with ``vmap``, infeasible candidates are discarded and the feasible one
with the lowest objective is returned. The optimum lies in the relative
interior of some face, where it satisfies that face's stationarity equations,
so it is among the candidates. Pseudo-inverses keep singular faces (duplicate
or opposite gradients) usable. Cost: ``2^T`` solves of at most ``T x T`` -- nothing for
T <= 8; larger T should use an iterative solver (``mgda(solver=
"frank_wolfe")``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_EXACT_TASKS = 10


def supports(t: int, include_empty: bool = False) -> jax.Array:
  """Static bool [K, t] of all (non-empty) subsets of ``range(t)``."""
  if t > MAX_EXACT_TASKS:
    raise ValueError(f"exact enumeration supports T <= {MAX_EXACT_TASKS}, got {t}")
  ids = np.arange(0 if include_empty else 1, 2**t)
  return jnp.asarray(((ids[:, None] >> np.arange(t)) & 1).astype(bool))


def _masked_pinv(a, m):
  mf = m.astype(a.dtype)
  return jnp.linalg.pinv(a * mf[:, None] * mf[None, :]), mf


def _pick(cands, objs, valid):
  best = jnp.argmin(jnp.where(valid, objs, jnp.inf))
  return cands[best]


def _tol(a):
  return 1e-6 if a.dtype == jnp.float32 else 1e-12


def simplex_min_norm(a: jax.Array) -> jax.Array:
  """``argmin_{x in simplex} x^T A x`` (MGDA's min-norm point weights), exact.

  On face ``S`` the KKT conditions are the bordered (saddle-point) system
  ``[[A_SS, 1], [1^T, 0]] [x_S; -mu] = [0; 1]``, solved with a symmetric
  pseudo-inverse; coordinates outside ``S`` are pinned to 0 by identity rows.
  Why the bordered system and not ``x_S = A_SS^+ 1 / (1^T A_SS^+ 1)``: the
  latter divides by ``1^T A_SS^+ 1``, which is 0 exactly when the face holds
  the origin (``g, -g``: ``1`` lies in the null space of ``A_SS``) and is
  garbage when ``A_SS`` is nearly singular in float32 (``g, -g + 1e-3 h``:
  pinv's cutoff drops the very eigenvalue the answer lives on), so the
  optimal face was rejected and a vertex (``|d| = |g|``) returned. The
  bordered matrix is singular only along directions in which the objective is
  flat on the face (duplicate gradients), where any pinv solution is optimal;
  its conditioning is that of the differences ``g_i - g_j``, not of ``A``.

  Every candidate is clipped to ``x >= 0`` and renormalised, so each one is a
  feasible point and the lowest objective among them is returned: no
  feasibility threshold can reject the optimum. ``A`` is first divided by its
  largest diagonal entry (the weights do not depend on the scale of ``A``).
  If several faces' objectives tie within float32 rounding of ``A`` (about
  ``eps * max ||g_i||^2``), the chosen point's ``d`` is within
  ``sqrt(eps) * max ||g_i||`` of the optimum (``||d - d*||^2 <= ||d||^2 -
  ||d*||^2`` on the convex hull); otherwise it is float32-exact.
  """
  t = a.shape[0]
  top = jnp.max(jnp.diag(a))
  a = a / jnp.where(top > 0, top, 1.0)
  masks = supports(t)
  rhs = jnp.zeros((t + 1,), a.dtype).at[t].set(1.0)

  def face(m):
    mf = m.astype(a.dtype)
    k = jnp.zeros((t + 1, t + 1), a.dtype)
    k = k.at[:t, :t].set(a * mf[:, None] * mf[None, :] + jnp.diag(1.0 - mf))
    k = k.at[:t, t].set(mf).at[t, :t].set(mf)
    x = jnp.maximum((jnp.linalg.pinv(k, hermitian=True) @ rhs)[:t] * mf, 0.0)
    s = jnp.sum(x)
    x = x / jnp.where(s > 0, s, 1.0)
    return x, x @ a @ x, s > 0

  xs, objs, ok = jax.vmap(face)(masks)
  return _pick(xs, objs, ok)


def cagrad_dual(a: jax.Array, rho: jax.Array, eps: float) -> jax.Array:
  """``argmin_{w in simplex} w^T A b + rho * sqrt(w^T A w + eps)``, ``b = 1/T``.

  The CAGrad dual (Liu et al. 2021, eq. after Prop. 3.1; objective exactly as
  in the reference code). On face ``S`` with ``P = A_SS^+``, ``a = (A b)_S``:
  stationarity gives ``w_S = P (mu 1 - a) / (1^T P (mu 1 - a))`` with ``mu``
  the larger root of ``k (beta mu^2 - 2 gamma mu) + delta + eps gamma^2 -
  rho^2 = 0`` (``beta = 1'P1``, ``gamma = 1'Pa``, ``delta = a'Pa``,
  ``k = 1 + eps beta``). Vertices are always candidates.
  """
  t = a.shape[0]
  masks = supports(t)
  ab = a @ jnp.full((t,), 1.0 / t, a.dtype)

  def obj(w):
    return w @ ab + rho * jnp.sqrt(jnp.maximum(w @ a @ w, 0.0) + eps)

  def face(m):
    p, mf = _masked_pinv(a, m)
    av = ab * mf
    beta, gamma, delta = mf @ p @ mf, mf @ p @ av, av @ p @ av
    k = 1.0 + eps * beta
    disc = (gamma * k) ** 2 - beta * k * (delta + eps * gamma**2 - rho**2)
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    mu = (gamma * k + sq) / jnp.where(beta * k > 0, beta * k, 1.0)
    y = p @ (mu * mf - av)
    s = mf @ y
    w = jnp.where(s > 0, y / jnp.where(s > 0, s, 1.0), 0.0) * mf
    single = jnp.sum(mf) == 1
    w = jnp.where(single, mf, w)
    ok = single | ((disc > 0) & (beta > 0) & (s > 0) & jnp.all(w >= -_tol(a)))
    return w, obj(w), ok

  ws, objs, ok = jax.vmap(face)(masks)
  w = jnp.maximum(_pick(ws, objs, ok), 0.0)
  return w / jnp.sum(w)


def dual_cone_weights(a: jax.Array, u: jax.Array) -> jax.Array:
  """``argmin_v v^T A v  s.t.  v >= u`` (one ``u`` [T]), exact.

  By Proposition 1 of Quinton & Rey (2024, "Jacobian Descent for
  Multi-Objective Optimization"), ``G^T v`` is the projection of ``G^T u`` onto
  the dual cone ``{x : G x >= 0}`` of the rows of ``G``. Enumerates the free
  set ``F`` (``v_F > u_F``; ``v_S = u_S`` elsewhere): ``v_F = -A_FF^+ A_FS u_S``.
  """
  masks = supports(a.shape[0], include_empty=True)

  def face(m):
    p, mf = _masked_pinv(a, m)
    us = u * (1.0 - mf)
    v = us - p @ (a @ us)
    v = jnp.where(m, v, u)
    ok = jnp.all(v >= u - _tol(a) * (1.0 + jnp.abs(u)))
    return v, v @ a @ v, ok

  vs, objs, ok = jax.vmap(face)(masks)
  return jnp.maximum(_pick(vs, objs, ok), u)


def _psd_pinv(a: jax.Array):
  """Eigen-decomposition pseudo-inverse of a symmetric PSD ``a`` with a cutoff of
  ``T * eps * lambda_max`` (pinv's default); returns ``(a^+, null basis columns)``."""
  lam, v = jnp.linalg.eigh(a)
  keep = lam > a.shape[0] * jnp.finfo(a.dtype).eps * jnp.maximum(jnp.max(lam), 0.0)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
  return (v * inv[None, :]) @ v.T, v * (~keep)[None, :]


def imtl_g_weights(a: jax.Array) -> jax.Array:
  """IMTL-G weights ``w = A^+ n / sum(A^+ n)`` (``n_i = ||g_i||``), exact in float32.

  Why not ``pinv(A) @ n``: ``A``'s eigenvalues span the squared norm ratios
  of the tasks, and float32 pinv drops every one below ``~1e-6 lambda_max``
  (norms 1e3 apart: ``[e1, 1e-3 e2]`` gave ``|d| = 1`` instead of 1.41e-3).
  With ``A = N C N`` (``N = diag(n)``, ``C`` the cosine matrix, as the paper's
  unit vectors ``u_i = g_i / n_i``), ``A w = n`` is ``C (N w) = 1``: only
  ``C``'s conditioning (the angles) matters, and ``C`` has a unit diagonal.
  ``y = C^+ 1`` gives ``w = N^-1 y`` up to a null vector of ``A``; that null
  component is then removed (``w`` orthogonal to ``null(A) = N^-1 null(C)``),
  which is what ``A^+ n`` returns (torchjd's ``IMTLG``) when the gradients are
  linearly dependent. Zero gradients get weight 0. When ``1`` has no component
  in ``range(C)`` (``g, -g``) there is no combination with equal positive
  projections: weights 0, as torchjd.
  """
  n = jnp.sqrt(jnp.maximum(jnp.diag(a), 0.0))
  live = n > 0
  inv_n = jnp.where(live, 1.0 / jnp.where(live, n, 1.0), 0.0)
  c = a * inv_n[:, None] * inv_n[None, :]
  c_pinv, z = _psd_pinv(c)
  ones = live.astype(a.dtype)
  y = c_pinv @ ones
  w = y * inv_n
  # Remove the null(A) component: null(A) is spanned by N^-1 z (zero tasks: e_i).
  nb = z * jnp.where(live, inv_n, 1.0)[:, None]
  nb = nb / jnp.maximum(jnp.linalg.norm(nb, axis=0, keepdims=True), jnp.finfo(a.dtype).tiny)
  w = w - nb @ (jnp.linalg.pinv(nb.T @ nb, hermitian=True) @ (nb.T @ w))
  s = jnp.sum(w)
  solvable = jnp.linalg.norm(c @ y) > jnp.sqrt(jnp.finfo(a.dtype).eps) * jnp.sqrt(jnp.sum(ones))
  ok = solvable & (jnp.abs(s) > 0)
  return jnp.where(ok, w / jnp.where(ok, s, 1.0), 0.0)


# ----------------------------------------------------------------------------
# MinNormSolver (Sener & Koltun 2018, Algorithm 2), as ported by LibMTL.
def _min_norm_2(v1v1, v1v2, v2v2):
  """Closed-form 2-vector min-norm step, with the reference's 0.999/0.001 ends."""
  gamma = -(v1v2 - v2v2) / jnp.where(v1v1 + v2v2 - 2 * v1v2 == 0, 1.0, v1v1 + v2v2 - 2 * v1v2)
  cost = v2v2 + gamma * (v1v2 - v2v2)
  gamma = jnp.where(v1v2 >= v2v2, 0.001, gamma)
  cost = jnp.where(v1v2 >= v2v2, v2v2, cost)
  gamma = jnp.where(v1v2 >= v1v1, 0.999, gamma)
  cost = jnp.where(v1v2 >= v1v1, v1v1, cost)
  return gamma, cost


def _projection2simplex(y):
  m = y.shape[0]
  srt = jnp.sort(y)[::-1]
  tmax = (jnp.cumsum(srt)[:-1] - 1.0) / jnp.arange(1, m, dtype=y.dtype)
  hit = tmax > srt[1:]
  first = jnp.argmax(hit)
  tmax_f = jnp.where(jnp.any(hit), tmax[first], (jnp.sum(y) - 1.0) / m)
  return jnp.maximum(y - tmax_f, 0.0)


def _next_point(cur, grad):
  n = cur.shape[0]
  proj = grad - jnp.sum(grad) / n
  big = jnp.asarray(jnp.inf, cur.dtype)
  tm1 = jnp.where(proj < 0, -cur / jnp.where(proj < 0, proj, 1.0), -big)
  tm2 = jnp.where(proj > 0, (1.0 - cur) / jnp.where(proj > 0, proj, 1.0), -big)
  t1 = jnp.min(jnp.where(tm1 > 1e-7, tm1, big))
  t2 = jnp.min(jnp.where(tm2 > 1e-7, tm2, big))
  tt = jnp.where(jnp.isfinite(t1), t1, 1.0)
  tt = jnp.where(jnp.isfinite(t2), jnp.minimum(tt, t2), tt)
  return _projection2simplex(proj * tt + cur)


def frank_wolfe_min_norm(a: jax.Array, max_iter: int = 250, stop_crit: float = 1e-5) -> jax.Array:
  """Iterative min-norm weights: a jit port of MinNormSolver.find_min_norm_element.

  Start from the best pair (closed form), then projected-gradient/Frank-Wolfe
  steps with the 2-point line search until the weights move by less than
  ``stop_crit`` (L1) or ``max_iter`` steps. Reproduces LibMTL's ``MGDA``
  (including the 0.999/0.001 clamp of the pair step). Any T.
  """
  t = a.shape[0]
  if t == 1:
    return jnp.ones((1,), a.dtype)
  iu, ju = (jnp.asarray(i) for i in np.triu_indices(t, k=1))
  g, c = _min_norm_2(a[iu, iu], a[iu, ju], a[ju, ju])
  best = jnp.argmin(c)  # first minimum, as the reference's strict '<'
  sol = jnp.zeros((t,), a.dtype).at[iu[best]].set(g[best])
  sol = sol.at[ju[best]].set(1.0 - g[best])
  if t < 3:
    return sol

  def cond(carry):
    it, _, done = carry
    return (it < max_iter) & ~done

  def body(carry):
    it, s, _ = carry
    new_point = _next_point(s, -(a @ s))
    nc, _ = _min_norm_2(s @ a @ s, s @ a @ new_point, new_point @ a @ new_point)
    new_s = nc * s + (1 - nc) * new_point
    done = jnp.sum(jnp.abs(new_s - s)) < stop_crit
    return it + 1, jnp.where(done, s, new_s), done

  _, sol, _ = jax.lax.while_loop(cond, body, (0, sol, jnp.array(False)))
  return sol


# ----------------------------------------------------------------------------
def nash_weights(a: jax.Array, iters: int = 50) -> jax.Array:
  """``alpha > 0`` solving ``A alpha = 1 / alpha`` (Nash-MTL, Navon et al. 2022).

  ``alpha`` is the unique minimiser of the strictly convex, self-concordant
  ``F(alpha) = alpha^T A alpha / 2 - sum_i log alpha_i`` (its gradient is
  ``A alpha - 1/alpha``). Damped Newton (Nesterov): step ``1 / (1 + lambda)``
  while the Newton decrement ``lambda >= 1/4``, full steps after; both stay in
  ``alpha > 0`` and converge quadratically. Solved on ``A / ||A||_F`` for
  conditioning (``alpha = alpha_hat / sqrt(||A||_F)``). If ``A`` has a
  nonnegative null vector (e.g. ``g_1 = -g_2``) no solution exists and
  ``alpha`` grows with ``iters``.
  """
  scale = jnp.sqrt(jnp.sum(a * a))
  scale = jnp.where(scale > 0, scale, 1.0)
  ah = a / scale
  d = jnp.diag(ah)
  x0 = 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0))

  def body(_, x):
    grad = ah @ x - 1.0 / x
    step = -jnp.linalg.solve(ah + jnp.diag(1.0 / x**2), grad)
    lam = jnp.sqrt(jnp.maximum(-(grad @ step), 0.0))
    new = x + jnp.where(lam >= 0.25, 1.0 / (1.0 + lam), 1.0) * step
    return jnp.where(jnp.all(new > 0) & jnp.all(jnp.isfinite(new)), new, x)

  x = jax.lax.fori_loop(0, iters, body, x0)
  return x / jnp.sqrt(scale)
