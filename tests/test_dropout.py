"""Byte-mask dropout: the drop rate and the expectation are what they claim, and its random
words are jax.random.bits's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models.dropout import Dropout, dropout, keep_mask, random_words


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


@pytest.mark.parametrize("n", [1, 7, 4096, 1_000_003])
@pytest.mark.parametrize("seed", [0, 12345])
def test_random_words_are_jax_random_bits(n, seed):
  key = jax.random.fold_in(jax.random.key(seed), 7)
  expected = jax.random.bits(key, (n,), jnp.uint32)
  np.testing.assert_array_equal(jax.jit(random_words, static_argnums=1)(key, n), expected)
  raw = jax.random.key_data(key)  # A legacy uint32[2] key gives the same words.
  np.testing.assert_array_equal(random_words(raw, n), expected)


def test_random_words_batched_over_keys_and_other_implementations():
  keys = jax.random.split(jax.random.key(3), 3)
  got = jax.vmap(lambda k: random_words(k, 1000))(keys)
  np.testing.assert_array_equal(got, jax.vmap(lambda k: jax.random.bits(k, (1000,)))(keys))
  rbg = jax.random.key(3, impl="rbg")
  np.testing.assert_array_equal(random_words(rbg, 1000), jax.random.bits(rbg, (1000,)))
