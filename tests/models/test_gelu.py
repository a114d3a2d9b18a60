"""The fast GELU form is BERT's exact GELU (checked against scipy in float64)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from mtl_jax.models.gelu import exact_gelu


def test_matches_exact_gelu_and_its_derivative():
  x = np.linspace(-12, 12, 20001).astype(np.float32)
  x64 = x.astype(np.float64)
  want = 0.5 * x64 * (1 + special.erf(x64 / np.sqrt(2)))
  want_grad = 0.5 * (1 + special.erf(x64 / np.sqrt(2))) + x64 * np.exp(-(x64**2) / 2) / np.sqrt(
    2 * np.pi
  )
  np.testing.assert_allclose(exact_gelu(jnp.asarray(x)), want, atol=2e-6, rtol=1e-6)
  grad = jax.vmap(jax.grad(exact_gelu))(jnp.asarray(x))
  np.testing.assert_allclose(grad, want_grad, atol=2e-6, rtol=1e-6)
  # Not the tanh approximation (which differs by up to ~5e-4 here).
  assert np.max(np.abs(np.asarray(jax.nn.gelu(x, approximate=True)) - want)) > 1e-4


def test_keeps_dtype():
  assert exact_gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16
