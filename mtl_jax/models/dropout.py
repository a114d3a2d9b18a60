"""Dropout from byte-sized random numbers: four masks per 32-bit random word.

On CPU, generating random bits (threefry) can cost more than the matmuls it masks: BERT's
attention-probability and hidden-state dropout draw ~120M numbers per training step.
Drawing one byte per element instead of one 32-bit word needs a quarter of the random
words. The
price is that the rate is rounded to a multiple of 1/256 (0.1 -> 26/256 = 0.1016); the
surviving activations are scaled by 1 / (1 - that rounded rate), so the expectation is
exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
  """(boolean keep-mask of `shape`, the effective drop rate)."""
  threshold = int(round(rate * 256))
  n = int(np.prod(shape))
  words = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
  random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n]
  return random_bytes.reshape(shape) >= threshold, threshold / 256


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  if rate <= 0:
    return x
  keep, effective = keep_mask(key, rate, x.shape)
  return jnp.where(keep, x / (1.0 - effective), 0).astype(x.dtype)


class Dropout(nn.Module):
  """Drop-in for nn.Dropout (same 'dropout' RNG stream) using `dropout` above."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate <= 0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))
