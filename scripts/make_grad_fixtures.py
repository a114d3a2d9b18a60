"""Build tests/fixtures/grad_reference.npz and grad_degenerate.npz from independent references.

The fixtures pin ``mtl_jax.grad`` to the PyTorch reference libraries, which
must never be installed into the project venv. Run it from a scratch venv
OUTSIDE the repo::

    python3 -m venv /work/scratch/grad-venv
    /work/scratch/grad-venv/bin/pip install torch==2.13.0 numpy scipy \
        "torchjd[full]==0.18.0"
    /work/scratch/grad-venv/bin/pip install --no-deps LibMTL==1.1.5
    /work/scratch/grad-venv/bin/python scripts/make_grad_fixtures.py [all|reference|degenerate]

(cvxpy comes with ``torchjd[full]``; any venv path outside the repository works.)

(LibMTL 1.1.5 imports torchvision at package import; this script loads only
``LibMTL.weighting`` through a stub package, so torchvision is not needed.)

What is stored, for each case ``c`` (fixed per-task gradient matrices ``G``
[T, D], D=10, T in {2, 3, 4}; conflicting, non-conflicting, mixed, badly
scaled; rounded to float32 values so both sides see identical inputs):

* ``c__G``; ``c__sum`` / ``c__mean`` / ``c__fixed`` (numpy).
* PCGrad: ``c__pcgrad_orders`` [K, T, T] -- EVERY combination of visiting
  orders (row i = a permutation of range(T), i itself skipped) -- and
  ``c__pcgrad`` [K, D], the output of torchjd's ``PCGrad`` (sum of projected
  rows) with ``torch.randperm`` patched to yield exactly those orders;
  LibMTL's ``PCGrad`` with ``random.shuffle`` patched is checked equal here.
  ``c__pcgrad_tasks01`` (targeted surgery on tasks {0, 1}) and
  ``c__pcgrad_against_sum_t{k}`` come from the plain numpy implementations
  below (written from the algorithm statements, not from mtl_jax).
* CAGrad (Liu et al. 2021): ``c__cagrad_c{c}_r{r}``: the Cranial-XIX/LibMTL
  objective (same epsilons) solved by SLSQP to ftol=1e-15;
  ``c__cagrad_libmtl_r{r}``: LibMTL ``CAGrad`` as shipped (T=3 only,
  default SLSQP tolerance); ``c__cagrad_torchjd_c{c}``: torchjd ``CAGrad``
  (CLARABEL; no rescale, no epsilons).
* MGDA: ``c__mgda_exact`` (min-norm point by cvxpy/CLARABEL), on the
  degenerate cases also ``c__mgda_kkt`` (float64 face enumeration);
  ``c__mgda_libmtl_{none,l2}`` (LibMTL ``MGDA``, the MinNormSolver port);
  ``c__mgda_torchjd`` (torchjd Frank-Wolfe, eps 1e-3).
* IMTL-G: ``c__imtl_g`` (torchjd ``IMTLG``), ``c__imtl_libmtl`` (LibMTL
  ``IMTL`` gradient part, loss scales at their init 0).
* Aligned-MTL: ``c__aligned_mtl_{min,median,rmse}`` (torchjd ``AlignedMTL``).
* Nash-MTL: ``c__nash_exact`` (alpha solving G G^T alpha = 1/alpha to 1e-12 by
  damped Newton in float64), ``c__nash_torchjd`` (torchjd ``NashMTL``,
  max_norm=0), ``c__nash_torchjd_clip`` (max_norm=1).
* GradDrop: ``c__graddrop_U`` (the uniform draw) and
  ``c__graddrop_leak{0,03}`` (torchjd ``GradDrop`` with ``torch.rand``
  patched to return ``U``; leak 0 or 0.3 for every task).
* UPGrad / DualProj: ``c__upgrad`` (torchjd defaults: quadprog, gramian
  normalised, reg 1e-4), ``c__upgrad_noreg`` (reg_eps=0), ``c__dualproj``.
* GradVac (stateful): ``gradvac_t3__{orders,out,phi}`` over a sequence of
  steps (the t3 cases in turn), torchjd ``GradVac(beta=0.3)`` with patched
  ``torch.randperm``.

``grad_degenerate.npz`` holds the same keys for degenerate stacks (see
:func:`make_degenerate_cases`): exactly and nearly opposite gradients, a zero
task (and all tasks zero), exactly and nearly collinear or duplicate
gradients, norms 1e-3..1e3 apart and random stacks with norms x0.03..x30, for
T = 2, 3 and 5. A reference that raises or returns a non-finite output on a
case is not stored; ``meta__skipped`` lists those as ``case:key: reason``
(e.g. Nash-MTL has no solution when ``A`` has a nonnegative null vector).
For T = 5 PCGrad is stored for 6 random order combinations instead of all
(4!)^5; GradVac's multi-step sequence is not repeated on these cases.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import random as pyrandom
import signal
import sys
import types
import zlib

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

# --- LibMTL.weighting without LibMTL/__init__ (which needs torchvision) ----
_spec = importlib.util.find_spec("LibMTL")
_stub = types.ModuleType("LibMTL")
_stub.__path__ = list(_spec.submodule_search_locations)
sys.modules["LibMTL"] = _stub
import cvxpy as cp  # noqa: E402
import LibMTL.weighting as lw  # noqa: E402
import torchjd  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from torchjd import aggregation as ta  # noqa: E402
from torchjd._linalg import QuadprogProjector  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "grad_reference.npz")
OUT_DEGENERATE = os.path.join(os.path.dirname(OUT), "grad_degenerate.npz")
D = 10
REFERENCE_SECONDS = 5  # per reference call on a degenerate case


# ----------------------------------------------------------------- cases
def _cos(g):
  n = np.linalg.norm(g, axis=1)
  return g @ g.T / np.outer(n, n)


def _pairs(g):
  c = _cos(g)
  t = len(g)
  return [c[i, j] for i in range(t) for j in range(i + 1, t)]


def _until(rng, make, ok):
  for _ in range(10000):
    g = make(rng)
    if ok(g):
      return g
  raise RuntimeError("no sample")


def make_cases(seed=0):
  rng = np.random.default_rng(seed)
  centered = lambda t: lambda r: (lambda x: x - 0.85 * x.mean(0))(r.normal(size=(t, D)))
  c = {}
  c["t3_mixed"] = _until(
    rng, lambda r: r.normal(size=(3, D)), lambda g: min(_pairs(g)) < 0 < max(_pairs(g))
  )
  c["t3_conflict"] = _until(rng, centered(3), lambda g: max(_pairs(g)) < 0)
  c["t3_noconflict"] = _until(
    rng,
    lambda r: r.normal(size=(3, D)) + 1.5 * r.normal(size=(1, D)),
    lambda g: min(_pairs(g)) > 0.1,
  )
  c["t3_one_conflict"] = _until(
    rng,
    lambda r: r.normal(size=(3, D)) + 0.5 * r.normal(size=(1, D)),
    lambda g: sum(p < 0 for p in _pairs(g)) == 1,
  )
  c["t3_scaled"] = _until(
    rng, lambda r: r.normal(size=(3, D)), lambda g: sum(p < 0 for p in _pairs(g)) >= 2
  ) * np.array([[0.05], [1.0], [20.0]])
  base = rng.normal(size=D)
  c["t3_dominant"] = np.stack(
    [0.1 * base, base + 0.3 * rng.normal(size=D), base + 0.3 * rng.normal(size=D)]
  )
  c["t2_conflict"] = _until(rng, lambda r: r.normal(size=(2, D)), lambda g: _pairs(g)[0] < -0.2)
  c["t2_noconflict"] = _until(rng, lambda r: r.normal(size=(2, D)), lambda g: _pairs(g)[0] > 0.2)
  c["t4_mixed"] = _until(
    rng, lambda r: r.normal(size=(4, D)), lambda g: min(_pairs(g)) < 0 < max(_pairs(g))
  )
  c["t4_conflict"] = _until(rng, centered(4), lambda g: sum(p < 0 for p in _pairs(g)) >= 5)
  return {k: v.astype(np.float32).astype(np.float64) for k, v in c.items()}


def make_degenerate_cases(seed=7):
  """Stacks on which float32 solvers are easy to get wrong (issue: MGDA returned a
  vertex on opposite gradients, IMTL-G lost small Gram eigenvalues)."""
  rng = np.random.default_rng(seed)
  g, h, k, m, q = rng.normal(size=(5, D))
  e = np.eye(D)
  lognorm = lambda t: np.exp(rng.uniform(np.log(0.03), np.log(30.0), size=(t, 1)))
  c = {
    "t2_opposite": np.stack([g, -g]),
    "t2_near_opposite": np.stack([g, -g + 1e-3 * h]),
    "t2_zero": np.stack([g, 0 * g]),
    "t2_all_zero": np.zeros((2, D)),
    "t2_duplicate": np.stack([g, g]),
    "t2_collinear": np.stack([g, 3 * g]),
    "t2_near_collinear": np.stack([g, 2 * g + 1e-3 * h]),
    "t2_unit_scaled": np.stack([e[0], 1e-3 * e[1]]),
    "t2_scaled": np.stack([1e-3 * g, 1e3 * h]),
    "t3_opposite": np.stack([g, -g, h]),
    "t3_near_opposite": np.stack([g, -g + 1e-3 * h, k]),
    "t3_zero": np.stack([g, 0 * g, h]),
    "t3_collinear": np.stack([g, -2 * g, 3 * g]),
    "t3_near_collinear": np.stack([g, g + 1e-3 * h, g + 1e-3 * k]),
    "t3_scaled": np.stack([1e-3 * g, h, 1e3 * k]),
    "t3_norms_a": rng.normal(size=(3, D)) * lognorm(3),
    "t3_norms_b": rng.normal(size=(3, D)) * lognorm(3),
    "t5_opposite": np.stack([g, -g, h, k, m]),
    "t5_zero": np.stack([g, 0 * g, h, 0 * g, k]),
    "t5_duplicate": np.stack([g, g, h, h, k]),
    "t5_near_collinear": np.stack([g + 1e-3 * x for x in (0 * g, h, k, m, q)]),
    "t5_scaled": np.stack([1e-3 * g, 1e-1 * h, k, 1e1 * m, 1e3 * q]),
    "t5_norms": rng.normal(size=(5, D)) * lognorm(5),
  }
  return {kk: v.astype(np.float32).astype(np.float64) for kk, v in c.items()}


# ----------------------------------------------------- patching helpers
class _Feed:
  """Callable replacing torch.randperm / torch.rand with prepared outputs."""

  def __init__(self, items):
    self.items = list(items)

  def __call__(self, *args, **kwargs):
    return self.items.pop(0)


def _patched(name, items, fn):
  orig = getattr(torch, name)
  feed = _Feed(items)
  setattr(torch, name, feed)
  try:
    out = fn()
  finally:
    setattr(torch, name, orig)
  assert not feed.items, f"{name}: not all prepared outputs consumed"
  return out


def all_orders(t):
  """Every combination of per-task visiting orders: [K, t, t] (row i starts with i)."""
  per_task = []
  for i in range(t):
    others = [j for j in range(t) if j != i]
    per_task.append([[i] + list(p) for p in itertools.permutations(others)])
  return np.array(list(itertools.product(*per_task)), dtype=np.int32)


def run_libmtl(cls, g, **kwargs):
  """Run a LibMTL weighting's backward on a fixed gradient matrix."""
  m = cls()
  m.task_num, m.device, m.rep_grad = len(g), "cpu", False
  if hasattr(m, "init_param"):
    m.init_param()
  gt = torch.tensor(g)
  out = {}
  m._compute_grad_dim = lambda: None
  m._compute_grad = lambda losses, mode, rep_grad=False: gt.clone()
  m._get_grads = lambda losses, mode="backward": gt.clone()
  m._reset_grad = lambda new: out.__setitem__("g", new.detach().clone())
  m.backward(torch.ones(len(g)), **kwargs)
  return out["g"].numpy()


def t(x):
  return torch.tensor(x)


# -------------------------------------------- independent numpy references
def np_pcgrad(g, orders, active):
  """Algorithm 1 of Yu et al. 2020 on explicit vectors (orders: [T, T])."""
  tt = len(g)
  out = np.zeros(g.shape[1])
  for i in range(tt):
    gi = g[i].copy()
    if active[i]:
      for j in orders[i]:
        if j != i and active[j]:
          d = gi @ g[j]
          if d < 0:
            gi = gi - d / (g[j] @ g[j]) * g[j]
    out += gi
  return out


def np_against_sum(g, k):
  s = g.sum(0) - g[k]
  gk = g[k].copy()
  d = gk @ s
  if d < 0:
    gk = gk - d / (s @ s) * s
  return g.sum(0) - g[k] + gk


def cagrad_tight(g, c, rescale):
  """Cranial-XIX / LibMTL CAGrad objective (same epsilons), any T, ftol 1e-15."""
  tt = len(g)
  gg = g @ g.T
  g0_norm = np.sqrt(gg.mean() + 1e-8)
  x0 = np.ones(tt) / tt
  cc = c * g0_norm + 1e-8
  obj = lambda x: x @ gg @ x0 + cc * np.sqrt(x @ gg @ x + 1e-8)
  res = minimize(
    obj,
    x0,
    bounds=[(0, 1)] * tt,
    constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
    method="SLSQP",
    options={"ftol": 1e-15, "maxiter": 2000},
  )
  gw = res.x @ g
  d = g.mean(0) + cc / (np.linalg.norm(gw) + 1e-8) * gw
  return d / [1.0, 1 + c**2, 1 + c][rescale]


def mgda_exact(g):
  x = cp.Variable(len(g))
  prob = cp.Problem(cp.Minimize(cp.sum_squares(g.T @ x)), [x >= 0, cp.sum(x) == 1])
  prob.solve(cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14)
  return np.clip(x.value, 0, None) / np.clip(x.value, 0, None).sum() @ g


def mgda_kkt(g):
  """Min-norm point by float64 enumeration of the simplex faces: on each face the
  bordered KKT system [[A_SS, 1], [1^T, 0]] [x; -mu] = [0; 1] (least squares),
  the lowest objective among the feasible solutions. Exact where an interior-point
  solver stops at its tolerance (CLARABEL is ~2e-4 off on [e1, 1e-3 e2])."""
  a = g @ g.T
  tt = len(g)
  best = None
  for r in range(1, tt + 1):
    for s in itertools.combinations(range(tt), r):
      s = list(s)
      k = np.zeros((r + 1, r + 1))
      k[:r, :r], k[:r, r], k[r, :r] = a[np.ix_(s, s)], 1.0, 1.0
      sol = np.linalg.lstsq(k, np.r_[np.zeros(r), 1.0], rcond=None)[0][:r]
      if np.all(sol >= -1e-12):
        x = np.zeros(tt)
        x[s] = np.clip(sol, 0.0, None)
        x /= x.sum()
        if best is None or x @ a @ x < best[0]:
          best = (x @ a @ x, x)
  return best[1] @ g


def nash_exact(g):
  """alpha > 0 with (G G^T) alpha = 1 / alpha (Navon et al. 2022, eq. 2)."""
  a = g @ g.T
  f = lambda al: 0.5 * al @ a @ al - np.log(al).sum()
  al = 1 / np.sqrt(np.diag(a))
  for _ in range(200):
    grad = a @ al - 1 / al
    step = -np.linalg.solve(a + np.diag(1 / al**2), grad)
    s = 1.0
    while np.any(al + s * step <= 0) or f(al + s * step) > f(al) + 1e-4 * s * grad @ step:
      s /= 2
      if s < 1e-20:
        break
    al = al + s * step
  assert np.linalg.norm(a @ al - 1 / al) < 1e-9 * max(1, np.abs(1 / al).max()), al
  return al @ g


# ------------------------------------------------------------------ main
def case_outputs(name, g, out, skipped, max_orders=None):
  """Every reference on one case, into ``out`` (keys ``name__...``).

  ``skipped`` is None for the regular cases (any failure is an error); for the
  degenerate ones it collects the references that raised or returned a
  non-finite output instead of storing them.
  """
  tt = len(g)
  gt = t(g)
  p = f"{name}__"

  def put(key, fn):
    if skipped is None:
      out[p + key] = fn()
      return
    # LibMTL 1.1.5's MinNormSolver loop never increments its iteration count,
    # so it spins forever on a stack where Frank-Wolfe does not settle.
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(REFERENCE_SECONDS)
    try:
      val = np.asarray(fn(), dtype=np.float64)
    except Exception as err:
      skipped.append(f"{name}:{key}: {type(err).__name__}: {str(err)[:80]}")
      return
    finally:
      signal.alarm(0)
    if not np.all(np.isfinite(val)):
      skipped.append(f"{name}:{key}: non-finite output")
      return
    out[p + key] = val

  out[p + "G"] = g
  out[p + "sum"] = g.sum(0)
  out[p + "mean"] = g.mean(0)
  out[p + "fixed"] = np.array([1.0, 0.5, 2.0, 0.25, 1.5][:tt]) @ g

  # PCGrad: every order combination through torchjd (patched randperm).
  orders = all_orders(tt)
  if max_orders is not None and len(orders) > max_orders:
    pick = np.random.default_rng(zlib.crc32(name.encode())).choice(
      len(orders), max_orders, replace=False
    )
    orders = orders[np.sort(pick)]
  refs = []
  for o in orders:
    r = _patched("randperm", [t(row).long() for row in o], lambda: ta.PCGrad()(gt))
    refs.append(r.numpy())
    assert np.allclose(refs[-1], np_pcgrad(g, o, [True] * tt), atol=1e-10)
    if tt == 3:  # LibMTL with its shuffle patched to the same orders
      lp = sys.modules["LibMTL.weighting.PCGrad"]
      seq = [list(row) for row in o]
      orig = lp.random
      lp.random = types.SimpleNamespace(
        shuffle=lambda lst: lst.__setitem__(slice(None), seq.pop(0))
      )
      try:
        lib = run_libmtl(lw.PCGrad, g)
      finally:
        lp.random = orig
      assert np.allclose(lib, refs[-1], atol=1e-10), (lib, refs[-1])
  out[p + "pcgrad_orders"] = orders
  out[p + "pcgrad"] = np.array(refs)
  if tt >= 3:
    out[p + "pcgrad_tasks01"] = np_pcgrad(g, orders[0], [i < 2 for i in range(tt)])
  for k in range(tt):
    out[p + f"pcgrad_against_sum_t{k}"] = np_against_sum(g, k)

  # CAGrad.
  for c in (0.4, 0.8):
    for r in (0, 1, 2):
      put(f"cagrad_c{c}_r{r}", lambda: cagrad_tight(g, c, r))
    put(f"cagrad_torchjd_c{c}", lambda: ta.CAGrad(c=c)(gt).numpy())
  if tt == 3:
    for r in (0, 1, 2):
      put(f"cagrad_libmtl_r{r}", lambda: run_libmtl(lw.CAGrad, g, calpha=0.4, rescale=r))

  # MGDA.
  put("mgda_exact", lambda: mgda_exact(g))
  if skipped is not None:
    put("mgda_kkt", lambda: mgda_kkt(g))
  for gn in ("none", "l2"):
    put(f"mgda_libmtl_{gn}", lambda: run_libmtl(lw.MGDA, g, mgda_gn=gn))
  put("mgda_torchjd", lambda: ta.MGDA()(gt).numpy())

  # IMTL-G.
  put("imtl_g", lambda: ta.IMTLG()(gt).numpy())
  put("imtl_libmtl", lambda: run_libmtl(lw.IMTL, g))

  # Aligned-MTL.
  for mode in ("min", "median", "rmse"):
    put(f"aligned_mtl_{mode}", lambda: ta.AlignedMTL(scale_mode=mode)(gt).numpy())

  # Nash-MTL.
  put("nash_exact", lambda: nash_exact(g))
  put("nash_torchjd", lambda: ta.NashMTL(n_tasks=tt, max_norm=0.0, optim_niter=100)(gt).numpy())
  put(
    "nash_torchjd_clip", lambda: ta.NashMTL(n_tasks=tt, max_norm=1.0, optim_niter=100)(gt).numpy()
  )

  # GradDrop with a fixed uniform draw.
  u = np.random.default_rng(zlib.crc32(name.encode())).uniform(size=D)
  out[p + "graddrop_U"] = u
  put("graddrop_leak0", lambda: _patched("rand", [t(u)], lambda: ta.GradDrop()(gt)).numpy())
  put(
    "graddrop_leak03",
    lambda: _patched("rand", [t(u)], lambda: ta.GradDrop(leak=torch.full((tt,), 0.3))(gt)).numpy(),
  )

  # UPGrad / DualProj.
  put("upgrad", lambda: ta.UPGrad()(gt).numpy())
  put("upgrad_noreg", lambda: ta.UPGrad(projector=QuadprogProjector(reg_eps=0.0))(gt).numpy())
  put("dualproj", lambda: ta.DualProj()(gt).numpy())


class ReferenceTimeout(Exception):
  pass


def _timeout(signum, frame):
  raise ReferenceTimeout(f"no result within {REFERENCE_SECONDS} s")


def _meta(cases):
  return {
    "meta__torchjd_version": np.array(
      torchjd.__version__ if hasattr(torchjd, "__version__") else "0.18.0"
    ),
    "meta__torch_version": np.array(torch.__version__),
    "meta__case_names": np.array(sorted(cases)),
  }


def _write(path, out):
  np.savez_compressed(path, **out)
  print(
    f"wrote {os.path.normpath(path)}: {len(out)} arrays, {os.path.getsize(path) / 1024:.0f} KiB"
  )


def write_reference():
  cases = make_cases()
  out = _meta(cases)
  for name, g in cases.items():
    case_outputs(name, g, out, skipped=None)

  # GradVac: a sequence of steps (state carries the EMA targets).
  steps = [n for n in sorted(cases) if n.startswith("t3_")]
  rng = np.random.default_rng(1)
  agg = ta.GradVac(beta=0.3)
  orders, outs, phis = [], [], []
  for n in steps:
    o = np.array(
      [[i] + list(rng.permutation([j for j in range(3) if j != i])) for i in range(3)],
      dtype=np.int32,
    )
    # torchjd draws randperm(len(others)) and indexes the list of others.
    feed = []
    for i in range(3):
      others = [j for j in range(3) if j != i]
      feed.append(torch.tensor([others.index(j) for j in o[i][1:]]).long())
    outs.append(_patched("randperm", feed, lambda: agg(t(cases[n]))).numpy())
    phis.append(agg.gramian_weighting._phi_t.numpy().copy())
    orders.append(o)
  out["gradvac_t3__steps"] = np.array(steps)
  out["gradvac_t3__orders"] = np.array(orders)
  out["gradvac_t3__out"] = np.array(outs)
  out["gradvac_t3__phi"] = np.array(phis)

  _write(OUT, out)
  _report(cases, out)


def write_degenerate():
  cases = make_degenerate_cases()
  out, skipped = _meta(cases), []
  for name, g in cases.items():
    case_outputs(name, g, out, skipped, max_orders=6)
  out["meta__skipped"] = np.array(skipped)
  _write(OUT_DEGENERATE, out)
  for line in skipped:
    print("skipped", line)
  _report(cases, out)


def _report(cases, out):
  """Reference-vs-reference agreement (reported, not asserted)."""
  for name in cases:
    p = f"{name}__"
    for a, b in [
      ("cagrad_c0.4_r0", "cagrad_torchjd_c0.4"),
      ("cagrad_c0.4_r1", "cagrad_libmtl_r1"),
      ("mgda_exact", "mgda_libmtl_none"),
      ("mgda_exact", "mgda_torchjd"),
      ("imtl_g", "imtl_libmtl"),
      ("nash_exact", "nash_torchjd"),
    ]:
      if p + a in out and p + b in out:
        print(
          f"{name:18s} {a:16s} vs {b:20s} max|diff| = {np.abs(out[p + a] - out[p + b]).max():.2e}"
        )


if __name__ == "__main__":
  which = sys.argv[1] if len(sys.argv) > 1 else "all"
  if which not in ("all", "reference", "degenerate"):
    sys.exit(f"usage: {sys.argv[0]} [all|reference|degenerate]")
  pyrandom.seed(0)
  torch.manual_seed(0)
  if which in ("all", "reference"):
    write_reference()
  if which in ("all", "degenerate"):
    write_degenerate()
