"""mtl_jax.grad on tiny literal pytrees: shapes, jit, optax.chain, shared_only,
registry, stats, and method properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import grad as mtlgrad
from mtl_jax.grad import _tree, projection
from mtl_jax.runtime import xla_options

T = 3
PARAMS = {
  "dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 10, "bias": jnp.zeros(3)},
  "scale": jnp.ones(()),
  "emb": jnp.ones((4, 2), jnp.float32),
}
KWARGS = {"fixed": {"weights": [1.0, 2.0, 0.5]}}


def _grads(key=0, t=T, params=PARAMS):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
  return jax.tree.unflatten(
    treedef, [jax.random.normal(k, (t,) + l.shape) for k, l in zip(keys, leaves)]
  )


def _method(name, **kw):
  return mtlgrad.get_method(name, num_tasks=T, **{**KWARGS.get(name, {}), **kw})


def _flat(tree):
  return np.concatenate([np.ravel(l) for l in jax.tree.leaves(tree)])


_LEAVES, _TREEDEF = jax.tree.flatten(PARAMS)


def _flat_stack(tree):
  return jnp.concatenate([l.reshape(T, -1) for l in jax.tree.leaves(tree)], axis=1)


def _unflat_stack(g):
  out, i = [], 0
  for l in _LEAVES:
    out.append(g[:, i : i + l.size].reshape((T,) + l.shape))
    i += l.size
  return jax.tree.unflatten(_TREEDEF, out)


@pytest.mark.parametrize("name", sorted(mtlgrad.METHODS))
def test_method_on_pytree(name):
  """One jit per method (compiles dominate the test time):

  * ``chain(method, adamw)`` inside ``lax.scan``: output leaves have the params'
    structure/shapes/dtypes, the state keeps its structure, params move;
  * dot products span all leaves: the result on the pytree equals the result
    on the single concatenated leaf (not for graddrop: per-leaf draws).
  """
  tx = optax.chain(_method(name), optax.adamw(1e-2))
  method = _method(name)
  grads = jnp.stack([_flat_stack(_grads(k)) for k in range(3)])  # [steps, T, D]

  @jax.jit
  def run(params):
    def step(carry, g):
      p, s = carry
      u, s = tx.update(_unflat_stack(g), s, p)
      return (optax.apply_updates(p, u), s), u

    tree, _ = method.update(_unflat_stack(grads[0]), method.init(PARAMS))
    mat, _ = method.update({"x": grads[0]}, method.init({"x": jnp.zeros(1)}))
    return jax.lax.scan(step, (params, tx.init(params)), grads), tree, mat["x"]

  ((params, state), updates), tree, mat = run(PARAMS)
  assert jax.tree.structure(params) == jax.tree.structure(PARAMS)
  for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(PARAMS)):
    assert p.shape == q.shape and p.dtype == q.dtype
    assert np.all(np.isfinite(p)) and not np.allclose(p, q)
  assert jax.tree.map(jnp.shape, tree) == jax.tree.map(jnp.shape, PARAMS)
  assert jax.tree.structure(jax.tree.map(lambda u: u[0], updates)) == jax.tree.structure(PARAMS)
  for v in mtlgrad.method_stats(state).values():
    assert np.all(np.isfinite(v))
  if name != "graddrop":
    np.testing.assert_allclose(_flat(tree), mat, rtol=2e-5, atol=2e-5)


def test_registry():
  assert {
    "sum",
    "mean",
    "fixed",
    "rlw",
    "pcgrad",
    "pcgrad_against_sum",
    "cagrad",
    "mgda",
    "imtl_g",
    "gradvac",
    "aligned_mtl",
    "nash_mtl",
    "graddrop",
    "upgrad",
    "dualproj",
  } <= set(mtlgrad.METHODS)
  assert isinstance(mtlgrad.get_method("PCGrad"), optax.GradientTransformation)
  with pytest.raises(ValueError) as e:
    mtlgrad.get_method("pcgard")
  assert "pcgard" in str(e.value) and "pcgrad" in str(e.value) and "cagrad" in str(e.value)


def test_num_tasks_mismatch_and_bad_args():
  with pytest.raises(ValueError):
    mtlgrad.pcgrad(num_tasks=4).update(_grads(), mtlgrad.pcgrad(num_tasks=4).init(PARAMS))
  with pytest.raises(ValueError):
    mtlgrad.pcgrad(reduction="max")
  with pytest.raises(ValueError):
    mtlgrad.cagrad(rescale=3)
  with pytest.raises(ValueError, match="c must be >= 0"):
    mtlgrad.cagrad(c=-1.0)
  with pytest.raises(ValueError):
    tx = mtlgrad.pcgrad(tasks=(0, 5))
    tx.update(_grads(), tx.init(PARAMS))


@pytest.mark.parametrize("name", sorted(mtlgrad.METHODS))
def test_updates_without_a_task_axis_are_refused_when_params_are_given(name):
  """Gradients of one task (param shapes), whose leading sizes all happen to equal T, are
  not a task stack: with the params at hand every method says so instead of combining."""
  params = {"w": jnp.ones((T, 2)), "b": jnp.ones((T,))}
  unstacked = jax.tree.map(lambda p: p * 2.0, params)
  tx = optax.chain(_method(name), optax.sgd(0.1))
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"\[T, \*param.shape\]; at \['b'\] the update is \(3,\)"):
    tx.update(unstacked, state, params, task_losses=jnp.ones(T))
  updates, _ = tx.update(_grads(params=params), state, params, task_losses=jnp.ones(T))
  assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


def _two(g1, g2):
  return {"w": jnp.stack([jnp.asarray(g1, jnp.float32), jnp.asarray(g2, jnp.float32)])}


def test_pcgrad_two_tasks_stats_and_reduction():
  g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
  tx = mtlgrad.pcgrad(num_tasks=2)
  out, state = tx.update(_two(g1, g2), tx.init({"w": jnp.zeros(2)}))
  p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
  p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
  np.testing.assert_allclose(out["w"], p1 + p2, atol=1e-6)  # a real sum
  st = mtlgrad.method_stats(state)
  np.testing.assert_allclose(st["num_projections"], [1, 1])
  np.testing.assert_allclose(
    st["removed_norm"], [np.linalg.norm(g1 - p1), np.linalg.norm(g2 - p2)], atol=1e-6
  )
  tx = mtlgrad.pcgrad(reduction="mean")
  out_mean, _ = tx.update(_two(g1, g2), tx.init(None))
  np.testing.assert_allclose(out_mean["w"], (p1 + p2) / 2, atol=1e-6)
  # no conflict: untouched sum, zero stats
  tx = mtlgrad.pcgrad(num_tasks=2)
  out, state = tx.update(_two(g1, [1.0, 1.0]), tx.init(None))
  np.testing.assert_allclose(out["w"], [2.0, 1.0])
  np.testing.assert_allclose(mtlgrad.method_stats(state)["removed_norm"], [0, 0])


def test_pcgrad_projects_against_original_gradients():
  # g0 conflicts with g1 and g2. Projecting g0 against the ORIGINAL g1, g2
  # (for a fixed order) differs from projecting against already-projected ones.
  g = np.array([[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.6, -0.5, 1.0]])
  a = jnp.asarray(g @ g.T, jnp.float32)
  order = jnp.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
  c, n = projection.pcgrad_coefficients(a, order)
  rows = []
  for i in range(3):
    gi = g[i].copy()
    for j in np.asarray(order[i]):
      if j != i and gi @ g[j] < 0:
        gi -= (gi @ g[j]) / (g[j] @ g[j]) * g[j]
    rows.append(gi)
  np.testing.assert_allclose(np.asarray(c) @ g, np.array(rows), atol=1e-6)


def test_random_orders_are_fresh_permutations():
  orders = jax.jit(lambda k: projection.random_orders(k, 4))(jax.random.PRNGKey(0))
  for row in np.asarray(orders):
    assert sorted(row.tolist()) == [0, 1, 2, 3]
  tx = mtlgrad.pcgrad()
  s0 = tx.init(None)
  _, s1 = tx.update(_grads(), s0)
  assert not np.array_equal(s0.key, s1.key)


def test_pcgrad_targeted_subset_passes_others_through():
  g = _grads(3)
  tx = mtlgrad.pcgrad(tasks=(0, 1))
  out, _ = tx.update(g, tx.init(PARAMS))
  m = np.asarray(_flat_stack(g), np.float64)
  p0, p1 = m[0].copy(), m[1].copy()
  d = m[0] @ m[1]
  if d < 0:
    p0 -= d / (m[1] @ m[1]) * m[1]
    p1 -= d / (m[0] @ m[0]) * m[0]
  np.testing.assert_allclose(_flat(out), p0 + p1 + m[2], atol=1e-5)


def test_shared_only_heads_get_their_own_gradient():
  params = {
    "enc": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
    "heads": {"sst": jnp.ones(2), "quora": jnp.ones(2), "sts": jnp.ones(1)},
  }
  g = _grads(5, params=params)
  for k, name in enumerate(["sst", "quora", "sts"]):  # head k: only task k
    g["heads"][name] = g["heads"][name] * (jnp.arange(T) == k).reshape(-1, 1)
  is_shared = {"enc": {"w": True, "b": True}, "heads": {"sst": False, "quora": False, "sts": False}}
  by_path = lambda tree: jax.tree_util.tree_map_with_path(
    lambda path, _: path[0].key == "enc", tree
  )
  for method, masks in (("pcgrad", (is_shared, by_path)), ("cagrad", (is_shared,))):
    for mask in masks:
      inner = mtlgrad.get_method(method, num_tasks=T)
      full = optax.chain(
        mtlgrad.shared_only(mtlgrad.get_method(method, num_tasks=T), mask), optax.sgd(1.0)
      )

      @jax.jit
      def run(g):
        ref, _ = inner.update(g["enc"], inner.init(params["enc"]))
        out, state = full.update(g, full.init(params), params)
        return ref, jax.tree.map(lambda u: -u, out), mtlgrad.method_stats(state)

      ref, out, stats = run(g)
      for k, name in enumerate(["sst", "quora", "sts"]):
        np.testing.assert_allclose(out["heads"][name], g["heads"][name][k], atol=1e-6)
      np.testing.assert_allclose(_flat(out["enc"]), _flat(ref), atol=1e-5)
      assert "task_weights" in stats


def test_shared_only_passes_own_slices_through():
  """A leaf with a task axis of its own ([T, ...], slice t task t's: task-specific copies)
  arrives as its per-task diagonal, row t task t's gradient of slice t: its update is that
  stack as it is, beside the method on the shared leaves and the task sum on a head."""
  params = {"enc": jnp.ones((3, 2)), "copies": jnp.ones((T, 4)), "head": jnp.ones(2)}
  g = _grads(7, params=params)
  g["copies"] = g["copies"][:, 0]  # [T, 4]: one row per task, the leaf's own shape.
  is_shared = {"enc": True, "copies": False, "head": False}
  own = {"enc": False, "copies": True, "head": False}
  tx = mtlgrad.shared_only(mtlgrad.pcgrad(num_tasks=T), is_shared, own)
  out, _ = jax.jit(lambda g: tx.update(g, tx.init(params), params))(g)
  np.testing.assert_array_equal(out["copies"], g["copies"])
  np.testing.assert_allclose(out["head"], g["head"].sum(0), atol=1e-6)
  inner = mtlgrad.pcgrad(num_tasks=T)
  ref, _ = inner.update({"enc": g["enc"]}, inner.init({"enc": params["enc"]}))
  np.testing.assert_allclose(out["enc"], ref["enc"], atol=1e-6)


@pytest.mark.parametrize("method", ["sum", "pcgrad", "dwa"])
@pytest.mark.parametrize("shared", [True, False])
def test_shared_only_with_one_side_empty(method, shared):
  """Probing has no shared leaf (and a model could have no task-specific one): the method
  of the empty side must not run on an empty tree."""
  params = {"heads": {"sst": jnp.ones(2), "quora": jnp.ones(3)}}
  g = _grads(6, params=params)
  tx = mtlgrad.shared_only(
    mtlgrad.get_method(method, num_tasks=T), jax.tree.map(lambda _: shared, params)
  )
  out, _ = jax.jit(lambda g: tx.update(g, tx.init(params), params, task_losses=jnp.ones(T)))(g)
  if not shared:  # Task-specific leaves: the plain task sum.
    np.testing.assert_allclose(_flat(out), _flat(jax.tree.map(lambda x: x.sum(0), g)), atol=1e-6)
  assert jax.tree.structure(out) == jax.tree.structure(params)


def test_method_stats_search_and_prefix():
  assert mtlgrad.method_stats(optax.chain(mtlgrad.sum_tasks(), optax.adam(1.0)).init(PARAMS)) == {}
  tx = optax.chain(mtlgrad.pcgrad(num_tasks=T), optax.adamw(1e-3))
  stats = mtlgrad.method_stats(tx.init(PARAMS))
  assert set(stats) == {"removed_norm", "num_projections", "task_weights"}
  assert stats["removed_norm"].shape == (T,)
  two = (mtlgrad.pcgrad(num_tasks=T).init(None), mtlgrad.mgda(num_tasks=T).init(None))
  keys = set(mtlgrad.method_stats(two))
  assert "removed_norm" in keys and sum(k.endswith(":task_weights") for k in keys) == 2
  assert mtlgrad.method_stats(mtlgrad.pcgrad().init(None)) == {}  # no num_tasks: no stats


def test_task_gradient_stats_jit_on_pytree():
  s = jax.jit(mtlgrad.task_gradient_stats)(_grads(2))
  m = np.asarray(_flat_stack(_grads(2)), np.float64)
  np.testing.assert_allclose(s["grad_norm"], np.linalg.norm(m, axis=1), rtol=1e-5)
  assert s["cosine"].shape == (T, T) and s["conflict"].dtype == jnp.float32
  assert s["num_conflicting_pairs"].shape == ()


def test_rlw_weights():
  tx = mtlgrad.rlw(seed=1, num_tasks=T)
  state = tx.init(PARAMS)
  ws = []
  for _ in range(3):
    _, state = tx.update(_grads(), state)
    ws.append(np.asarray(mtlgrad.method_stats(state)["task_weights"]))
  for w in ws:
    assert np.all(w > 0) and abs(w.sum() - 1) < 1e-6
  assert not np.allclose(ws[0], ws[1])
  _, again = tx.update(_grads(), tx.init(PARAMS))
  np.testing.assert_allclose(mtlgrad.method_stats(again)["task_weights"], ws[0])


def test_graddrop_properties():
  g = _grads(4)
  same_sign = jax.tree.map(jnp.abs, g)
  leak1, plain = mtlgrad.graddrop(leak=1.0, num_tasks=T), mtlgrad.graddrop(num_tasks=T)

  @jax.jit
  def run(g, same_sign):
    out_leak, _ = leak1.update(g, leak1.init(PARAMS))
    out_same, s1 = plain.update(same_sign, plain.init(PARAMS))
    out, s2 = plain.update(g, s1)
    return out_leak, out_same, mtlgrad.method_stats(s1), mtlgrad.method_stats(s2)

  out_leak, out_same, st1, st2 = run(g, same_sign)
  np.testing.assert_allclose(_flat(out_leak), _flat_stack(g).sum(0), atol=1e-6)
  np.testing.assert_allclose(_flat(out_same), _flat_stack(same_sign).sum(0), atol=1e-6)
  np.testing.assert_allclose(st1["removed_norm"], 0, atol=1e-6)
  assert np.all(st2["removed_norm"] > 0) and np.all(st2["kept_fraction"] < 1)


def test_solution_properties():
  g = _grads(6)
  m = np.asarray(_flat_stack(g), np.float64)
  txs = {
    "nash": mtlgrad.nash_mtl(num_tasks=T),
    "upgrad": mtlgrad.upgrad(reg_eps=0.0),
    "mgda": mtlgrad.mgda(num_tasks=T),
    "imtl": mtlgrad.imtl_g(num_tasks=T),
    "cagrad0": mtlgrad.cagrad(c=0.0, rescale=0),
  }

  @jax.jit
  def run(g):
    res = {}
    for k, tx in txs.items():
      out, st = tx.update(g, tx.init(PARAMS))
      res[k] = (
        jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(out)]),
        mtlgrad.method_stats(st),
      )
    return res

  r = {k: (np.asarray(d, np.float64), st) for k, (d, st) in run(g).items()}
  d, st = r["nash"]  # ||d||^2 = T, A alpha = 1/alpha
  np.testing.assert_allclose(d @ d, T, rtol=1e-4)
  alpha = np.asarray(st["task_weights"], np.float64)
  np.testing.assert_allclose((m @ m.T) @ alpha, 1 / alpha, rtol=1e-4)
  d, _ = r["upgrad"]  # in the dual cone
  assert np.all(m @ d >= -1e-5)
  d, st = r["mgda"]  # min-norm: g_i.d >= |d|^2
  assert np.all(m @ d >= d @ d - 1e-4) and abs(st["task_weights"].sum() - 1) < 1e-5
  d, _ = r["imtl"]  # equal projections on unit g_i
  proj = m @ d / np.linalg.norm(m, axis=1)
  np.testing.assert_allclose(proj, proj[0], rtol=1e-4)
  d, _ = r["cagrad0"]  # c=0: the mean
  np.testing.assert_allclose(d, m.mean(0), atol=1e-5)


def test_nash_update_every_reuses_weights():
  tx = mtlgrad.nash_mtl(num_tasks=T, update_weights_every=2)
  state = tx.init(PARAMS)
  _, state = tx.update(_grads(0), state)
  w0 = mtlgrad.method_stats(state)["task_weights"]
  _, state = tx.update(_grads(1), state)
  np.testing.assert_allclose(mtlgrad.method_stats(state)["task_weights"], w0)
  _, state = tx.update(_grads(2), state)
  assert not np.allclose(mtlgrad.method_stats(state)["task_weights"], w0)


def test_bfloat16_leaves_keep_dtype():
  g = jax.tree.map(lambda l: l.astype(jnp.bfloat16), _grads())
  for name in ("pcgrad", "graddrop"):
    tx = _method(name)
    out, _ = jax.jit(tx.update)(g, tx.init(PARAMS))
    assert all(l.dtype == jnp.bfloat16 for l in jax.tree.leaves(out))
    assert all(np.all(np.isfinite(np.asarray(l, np.float32))) for l in jax.tree.leaves(out))


@pytest.mark.parametrize("d", [1, 5, 8, 387, 4_000_003])
def test_gram_matches_float64_for_short_and_long_rows(d):
  # Long rows are the case that matters: the word-embedding gradient of the bundled model has
  # 11.7M entries per task; compiled as the train step is (its XLA:CPU options), a plain
  # [T, D] x [D, T] dot was 0.4% off at D = 4M (2% at 11.7M). Offset rows make large sums.
  g = np.asarray(jax.random.normal(jax.random.PRNGKey(d), (T, d))) + np.array([[0.5], [-0.3], [1]])
  expected = g.astype(np.float64) @ g.astype(np.float64).T
  g = jnp.asarray(g, jnp.float32)
  options = xla_options.train_step_options()
  got = np.asarray(jax.jit(_tree.gram).lower(g).compile(compiler_options=options)(g))
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6 * np.sqrt(d))
  np.testing.assert_array_equal(got, got.T)


def test_gram_tree_sums_leaves_of_any_shape():
  grads = _grads(7)
  expected = np.asarray(_flat_stack(grads), np.float64)
  np.testing.assert_allclose(
    np.asarray(_tree.gram_tree(grads)), expected @ expected.T, rtol=1e-6, atol=1e-6
  )
