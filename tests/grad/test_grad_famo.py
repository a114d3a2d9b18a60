"""grad.famo against the NumPy transcription of the FAMO reference
(scripts/make_famo_fixture.py -> tests/fixtures/famo_reference.npz)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import default_config_with, load_npz

from mtl_jax import grad as mtlgrad
from mtl_jax.config import run_spec


def test_famo_matches_the_reference_over_steps():
  ref = load_npz("famo_reference.npz")
  n, t, d = ref["grads"].shape
  tx = mtlgrad.famo(num_tasks=t, w_lr=float(ref["w_lr"]), gamma=float(ref["gamma"]))
  params = {"x": jnp.zeros((d,), jnp.float32)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k in range(n):
    grads = {"x": jnp.asarray(ref["grads"][k], jnp.float32)}
    out, state = update(grads, state, params, task_losses=jnp.asarray(ref["losses"][k]))
    np.testing.assert_allclose(state.logits, ref["logits"][k], atol=2e-6, err_msg=f"step {k}")
    np.testing.assert_allclose(state.stats["task_weights"], ref["weights"][k], rtol=2e-6)
    np.testing.assert_allclose(out["x"], ref["combined"][k], rtol=1e-5, atol=1e-6)
  assert np.abs(ref["logits"][-1]).max() > 1e-3  # The logits did move.


def test_famo_first_weights_and_errors():
  tx = mtlgrad.famo(num_tasks=2)
  params = {"x": jnp.zeros(2)}
  grads = {"x": jnp.eye(2)}
  out, state = tx.update(grads, tx.init(params), params, task_losses=jnp.array([1.0, 3.0]))
  # z uniform: weights (1/D) / sum(1/D) = (3/4, 1/4); the logits have not moved yet.
  np.testing.assert_allclose(out["x"], [0.75, 0.25], rtol=1e-6)
  np.testing.assert_array_equal(state.logits, 0.0)
  out, same = tx.update(grads, state, params)  # No losses: z, the logits stay.
  np.testing.assert_allclose(out["x"], [0.5, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(same.logits, state.logits)
  with pytest.raises(ValueError, match="shape"):
    tx.update(grads, state, params, task_losses=jnp.ones(3))


def test_famo_by_config_in_an_optax_chain():
  config = default_config_with(**{"grad.method": "famo"})
  config.grad.kwargs.w_lr = 0.05
  method = run_spec.grad_method(config)
  params = {"encoder": {"w": jnp.zeros(4)}, "heads": {"sst": jnp.zeros(1)}}
  is_shared = {"encoder": {"w": True}, "heads": {"sst": False}}
  tx = optax.chain(mtlgrad.shared_only(method, is_shared), optax.sgd(1.0))
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.ones((3, *p.shape)), params)
  for losses in ([1.0, 2.0, 3.0], [0.5, 2.0, 3.5]):
    out, state = tx.update(grads, state, params, task_losses=jnp.array(losses))
  stats = mtlgrad.method_stats(state)
  assert stats["task_weights"].shape == (3,)
  np.testing.assert_allclose(float(stats["task_weights"].sum()), 1.0, rtol=1e-6)
  with pytest.raises(run_spec.ConfigError, match="grad.scope.*famo"):
    run_spec.grad_method(default_config_with(**{"grad.method": "famo", "grad.scope": "group"}))
