"""Loss-side weightings: DWA (mtlgrad.dwa, fed the losses through `task_losses=`) against a
numpy transcription of eq. 7, and uncertainty weighting (config.train.loss_weighting) in
the train step against its closed form, plus one tiny end-to-end run with both."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import needs_data, read_metrics, restored_trainable, tiny_config

from mtl_jax import grad as mtlgrad
from mtl_jax import step as step_lib
from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.models import multitask

T = 3
PARAMS = {
  "enc": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
  "heads": {"sst": jnp.ones(2), "quora": jnp.ones(2), "sts": jnp.ones(1)},
}
IS_SHARED = {"enc": {"w": True, "b": True}, "heads": {"sst": False, "quora": False, "sts": False}}


def _grads(key, params=PARAMS):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
  g = jax.tree.unflatten(
    treedef, [jax.random.normal(k, (T,) + l.shape) for k, l in zip(keys, leaves)]
  )
  if "heads" in g:  # head k: only task k's loss reaches it
    for k, name in enumerate(("sst", "quora", "sts")):
      g["heads"][name] = g["heads"][name] * (jnp.arange(T) == k).reshape(-1, 1)
  return g


def _flat(tree):
  return np.concatenate([np.ravel(l) for l in jax.tree.leaves(tree)])


def _losses(steps, seed=0):
  """Positive synthetic losses [steps, T] with different trends per task."""
  rng = np.random.default_rng(seed)
  n = np.arange(steps)[:, None]
  trend = np.array([[2.0, 1.0, 0.5]]) * np.exp(-np.array([[0.05, 0.01, 0.2]]) * n)
  return (trend * rng.uniform(0.7, 1.3, (steps, T))).astype(np.float32)


def dwa_reference(losses: np.ndarray, period: int, temperature: float = 2.0) -> np.ndarray:
  """Weights [steps, T] of eq. 7 (Liu et al. 2019): update n is in period p = n // period;
  w = 1 for p < 2, else w_k = K exp(r_k / temp) / sum_i exp(r_i / temp) with
  r_k = L_k(p-1) / L_k(p-2), L(q) the mean loss of period q."""
  steps, k = losses.shape
  out = np.ones((steps, k))
  for n in range(steps):
    p = n // period
    if p < 2:
      continue
    mean = lambda q: losses[q * period : (q + 1) * period].astype(np.float64).mean(0)
    e = np.exp(mean(p - 1) / mean(p - 2) / temperature)
    out[n] = k * e / e.sum()
  return out


# ---------------------------------------------------------------------------
# DWA


def test_dwa_matches_eq7_and_combines_the_weighted_gradients():
  period, steps = 3, 14  # 4 full periods and part of a fifth
  losses = _losses(steps)
  ref = dwa_reference(losses, period)
  assert np.allclose(ref[: 2 * period], 1.0) and not np.allclose(ref[2 * period :], 1.0)
  tx = mtlgrad.dwa(num_tasks=T, period=period)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  for n in range(steps):
    g = _grads(n)
    out, state = update(g, state, task_losses=jnp.asarray(losses[n]))
    w = np.asarray(mtlgrad.method_stats(state)["task_weights"], np.float64)
    np.testing.assert_allclose(w, ref[n], rtol=1e-5, err_msg=f"step {n}")
    np.testing.assert_allclose(w.sum(), T, rtol=1e-5)
    stacked = np.stack([_flat(jax.tree.map(lambda l: l[k], g)) for k in range(T)])
    np.testing.assert_allclose(_flat(out), ref[n] @ stacked, rtol=1e-5, atol=1e-5)
  # The windows: 4 completed, 2 losses into the fifth, L(t-1) the mean of the fourth.
  assert int(state.windows) == 4 and int(state.count) == steps - 4 * period
  np.testing.assert_allclose(state.last, losses[9:12].mean(0), rtol=1e-5)
  np.testing.assert_allclose(state.window_sum, losses[12:14].sum(0), rtol=1e-5)


def test_dwa_temperature_and_no_losses_fallback():
  losses = _losses(8, seed=1)
  tx = mtlgrad.get_method("dwa", num_tasks=T, temperature=0.5, period=2)
  state = tx.init(PARAMS)
  for n in range(6):
    _, state = tx.update(_grads(n), state, task_losses=losses[n])
  np.testing.assert_allclose(
    mtlgrad.method_stats(state)["task_weights"], dwa_reference(losses, 2, 0.5)[5], rtol=1e-5
  )
  # Without task_losses: the current weights, and the windows stay where they were.
  out, again = tx.update(_grads(9), state)
  assert int(again.count) == int(state.count) and int(again.windows) == int(state.windows)
  np.testing.assert_array_equal(again.window_sum, state.window_sum)
  w = dwa_reference(losses, 2, 0.5)[6]
  g = _grads(9)
  stacked = np.stack([_flat(jax.tree.map(lambda l: l[k], g)) for k in range(T)])
  np.testing.assert_allclose(_flat(out), w @ stacked, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(_grads(0), state, task_losses=jnp.ones(T + 1))
  for bad in ({"period": 0}, {"temperature": 0.0}, {"period": 2.5}):
    with pytest.raises(ValueError):
      mtlgrad.dwa(num_tasks=T, **bad)


def test_dwa_inside_shared_only_and_chain_gets_the_losses():
  """optax.partition (shared_only) and optax.chain forward task_losses to dwa; heads keep
  their own task's gradient; the whole optimizer runs under jit with adamw."""
  period, steps = 2, 7
  losses = _losses(steps, seed=2)
  ref = dwa_reference(losses, period)
  sgd = optax.chain(mtlgrad.shared_only(mtlgrad.dwa(T, period=period), IS_SHARED), optax.sgd(1.0))
  adamw = optax.chain(
    mtlgrad.shared_only(mtlgrad.dwa(T, period=period), IS_SHARED),
    optax.clip_by_global_norm(1.0),
    optax.adamw(1e-2),
  )

  @jax.jit
  def run(g, losses):
    def body(carry, x):
      s_sgd, p, s_adamw = carry
      g, loss = x
      u, s_sgd = sgd.update(g, s_sgd, PARAMS, task_losses=loss)
      v, s_adamw = adamw.update(g, s_adamw, p, task_losses=loss)
      w = mtlgrad.method_stats(s_sgd)["task_weights"]
      return (s_sgd, optax.apply_updates(p, v), s_adamw), (jax.tree.map(lambda a: -a, u), w)

    init = (sgd.init(PARAMS), PARAMS, adamw.init(PARAMS))
    return jax.lax.scan(body, init, (g, losses))

  gs = [_grads(10 + n) for n in range(steps)]
  g = jax.tree.map(lambda *x: jnp.stack(x), *gs)
  (_, params, s_adamw), (outs, ws) = run(g, jnp.asarray(losses))
  np.testing.assert_allclose(ws, ref, rtol=1e-5)
  np.testing.assert_allclose(mtlgrad.method_stats(s_adamw)["task_weights"], ref[-1], rtol=1e-5)
  for n in range(steps):
    enc = np.asarray(_flat(jax.tree.map(lambda l: l[n], outs["enc"])))
    stacked = np.stack([_flat(jax.tree.map(lambda l: l[k], gs[n]["enc"])) for k in range(T)])
    np.testing.assert_allclose(enc, ref[n] @ stacked, rtol=1e-5, atol=1e-5)
    for k, name in enumerate(("sst", "quora", "sts")):
      np.testing.assert_allclose(outs["heads"][name][n], gs[n]["heads"][name][k], atol=1e-6)
  for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(PARAMS)):
    assert np.all(np.isfinite(p)) and not np.allclose(p, q)


def test_other_methods_ignore_task_losses_in_the_trainer_chain():
  """The trainer passes task_losses to every method: plain transforms must not see it."""
  g = _grads(3)
  for name in sorted(mtlgrad.METHODS):
    kwargs = {"weights": [1.0, 2.0, 0.5]} if name == "fixed" else {}
    tx = optax.chain(
      mtlgrad.shared_only(mtlgrad.get_method(name, num_tasks=T, **kwargs), IS_SHARED),
      optax.sgd(1.0),
    )
    run = jax.jit(
      lambda g, losses, tx=tx: (
        tx.update(g, tx.init(PARAMS), PARAMS, task_losses=losses)[0],
        tx.update(g, tx.init(PARAMS), PARAMS)[0],
      )
    )
    with_losses, without = run(g, jnp.ones(T))
    if name != "dwa":
      np.testing.assert_allclose(_flat(with_losses), _flat(without), rtol=1e-6, err_msg=name)
    assert np.all(np.isfinite(_flat(with_losses))), name


def test_config_validation(tiny_bert_dir):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  config.model.max_length = 32  # The tiny model has 64 positions.
  config.train.length_buckets = (32,)
  config.grad.method = "dwa"
  config.grad.kwargs.period = 10
  run_spec.build(config)
  assert isinstance(run_spec.grad_method(config), optax.GradientTransformationExtraArgs)
  config.grad.kwargs.period = 0
  with pytest.raises(run_spec.ConfigError, match="grad"):
    run_spec.build(config)
  config.grad.kwargs.period = 10
  config.train.loss_weighting = "uncertainty"
  run_spec.build(config)
  config.train.loss_weighting = "kendall"
  with pytest.raises(run_spec.ConfigError, match="train.loss_weighting"):
    run_spec.build(config)


# ---------------------------------------------------------------------------
# Uncertainty weighting


def test_weighted_task_loss_closed_form():
  log_var = jnp.array([0.3, -0.7, 1.1])
  for task, raw in enumerate((0.9, 2.5, 0.05)):
    value, (d_raw, d_s) = jax.value_and_grad(step_lib.weighted_task_loss, argnums=(0, 1))(
      jnp.float32(raw), log_var, task
    )
    s = float(log_var[task])
    np.testing.assert_allclose(value, np.exp(-s) * raw / 2 + s / 2, rtol=1e-6)
    np.testing.assert_allclose(d_raw, np.exp(-s) / 2, rtol=1e-6)
    expected = np.zeros(T)
    expected[task] = 0.5 - np.exp(-s) * raw / 2
    np.testing.assert_allclose(d_s, expected, rtol=1e-6, atol=1e-7)


def test_per_task_grads_with_log_variances(tiny_bert_dir):
  """The step's per-task gradients: raw losses unchanged, model gradients scaled by
  exp(-s_t)/2, d/ds_t = 1/2 - exp(-s_t) L_t / 2 at index t only; is_shared leaves the
  log-variances out of the surgery."""
  model, params = multitask.build(
    multitask.ModelSpec(path=tiny_bert_dir, mode="probe"), jax.random.key(0)
  )
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, "probe"))
  log_var = jnp.array([0.4, -0.3, 0.8])
  weighted = dict(trainable, loss_weighting={"log_var": log_var})
  shared = multitask.is_shared(weighted)
  assert not any(jax.tree.leaves(shared["loss_weighting"]))
  rng = np.random.default_rng(0)
  s, length = 4, 8
  batch = {
    "input_ids": rng.integers(5, 100, (T, s, length)).astype(np.int32),
    "attention_mask": np.ones((T, s, length), np.int32),
    "token_type_ids": np.zeros((T, s, length), np.int32),
    "labels": rng.integers(0, 2, (T, s)).astype(np.float32),
    "weights": np.ones((T, s), np.float32),
  }
  keys = jax.random.split(jax.random.key(1), T)
  per_task = jax.jit(step_lib.make_per_task_grads(model))
  raw, g_raw = per_task(trainable, frozen, batch, jnp.arange(T), keys)
  raw_w, g_w = per_task(weighted, frozen, batch, jnp.arange(T), keys)
  np.testing.assert_allclose(raw_w, raw, rtol=1e-6)
  scale = np.exp(-np.asarray(log_var)) / 2
  for a, b in zip(jax.tree.leaves(g_raw), jax.tree.leaves({k: g_w[k] for k in g_raw})):
    np.testing.assert_allclose(
      b, np.asarray(a) * scale.reshape((T,) + (1,) * (a.ndim - 1)), rtol=1e-5, atol=1e-7
    )
  expected = np.diag(0.5 - np.exp(-np.asarray(log_var)) * np.asarray(raw) / 2)
  np.testing.assert_allclose(g_w["loss_weighting"]["log_var"], expected, rtol=1e-5, atol=1e-7)
  objective = jax.vmap(step_lib.make_loss_fn(model), in_axes=(None, None, 0, 0, 0))(
    weighted, frozen, batch, jnp.arange(T), keys
  )
  np.testing.assert_allclose(
    objective,
    np.exp(-np.asarray(log_var)) * np.asarray(raw) / 2 + np.asarray(log_var) / 2,
    rtol=1e-5,
  )


@needs_data
def test_uncertainty_and_dwa_end_to_end(tiny_bert_dir, tmp_path):
  config = tiny_config(tiny_bert_dir, loss_weighting="uncertainty")
  config.grad.method = "dwa"
  config.grad.kwargs.period = 1
  config.eval.write_predictions = False
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["overall"])
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  tasks = ("sst", "quora", "sts")
  for r in rows:
    assert np.isfinite(r["loss"])
    assert r["loss"] == pytest.approx(sum(r[f"task_loss/{t}"] for t in tasks), rel=1e-5)
    assert sum(r[f"method/task_weights/{t}"] for t in tasks) == pytest.approx(3.0, rel=1e-5)
  assert all(r[f"loss_weight/{t}"] == pytest.approx(1.0) for r in rows[:1] for t in tasks)
  assert any(r[f"loss_weight/{t}"] != pytest.approx(1.0, abs=1e-6) for t in tasks for r in rows[1:])
  # period=1: steps 1-2 weigh 1, step 3 uses L(2)/L(1) from the logged raw losses.
  for r in rows[:2]:
    assert all(r[f"method/task_weights/{t}"] == pytest.approx(1.0) for t in tasks)
  ratio = np.array([rows[1][f"task_loss/{t}"] / rows[0][f"task_loss/{t}"] for t in tasks])
  e = np.exp(ratio / 2.0)
  np.testing.assert_allclose(
    [rows[2][f"method/task_weights/{t}"] for t in tasks], 3 * e / e.sum(), rtol=1e-4
  )
  log_var = np.asarray(restored_trainable(config, workdir)["loss_weighting"]["log_var"])
  assert log_var.shape == (3,) and np.all(np.isfinite(log_var)) and np.all(log_var != 0)
