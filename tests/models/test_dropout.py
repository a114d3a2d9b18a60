"""Byte-mask dropout: the drop rate and the expectation are what they claim."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_drop_fraction_matches_the_rounded_rate(rate):
  keep, effective = keep_mask(jax.random.key(0), rate, (1000, 999))  # Not a multiple of 4.
  assert effective == round(rate * 256) / 256
  assert abs(1 - float(keep.mean()) - effective) < 3e-3


def test_dropout_preserves_the_mean_and_zeroes_the_rest():
  x = jnp.ones((2000, 500))
  y = dropout(x, 0.1, jax.random.key(1))
  assert abs(float(y.mean()) - 1.0) < 5e-3
  values = np.unique(np.asarray(y))
  np.testing.assert_allclose(values, [0.0, 1 / (1 - 26 / 256)], rtol=1e-6)


def test_masks_differ_across_keys_and_module_is_identity_when_deterministic():
  a, _ = keep_mask(jax.random.key(0), 0.1, (64, 64))
  b, _ = keep_mask(jax.random.key(1), 0.1, (64, 64))
  assert bool((a != b).any())
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
  y = Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert bool((y == 0).any()) and y.shape == x.shape
