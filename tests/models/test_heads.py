"""mtl_jax.models.heads: pooling, cosine and the three task heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import heads


def _hidden_and_mask(lengths, length, h=6, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(len(lengths), length, h)).astype(np.float32)
  mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return hidden, mask


def test_mean_pool_is_mean_over_real_tokens():
  lengths = [1, 3, 5]
  hidden, mask = _hidden_and_mask(lengths, 5)
  out = np.asarray(heads.pool(jnp.asarray(hidden), jnp.asarray(mask), "mean"))
  assert out.shape == (3, 6)
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(out[i], hidden[i, :n].mean(0), rtol=1e-6, atol=1e-6)


def test_mean_pool_ignores_padding():
  lengths = [2, 4, 1]
  hidden, mask = _hidden_and_mask(lengths, 4, seed=1)
  short = np.asarray(heads.pool(jnp.asarray(hidden), jnp.asarray(mask), "mean"))
  rng = np.random.default_rng(2)
  for extra in (1, 7):
    # Padding positions carry large garbage values; the mask must hide them.
    junk = 100.0 * rng.normal(size=(3, extra, 6)).astype(np.float32)
    long_h = np.concatenate([hidden, junk], axis=1)
    long_m = np.concatenate([mask, np.zeros((3, extra), np.int32)], axis=1)
    long = np.asarray(heads.pool(jnp.asarray(long_h), jnp.asarray(long_m), "mean"))
    np.testing.assert_allclose(long, short, rtol=1e-6, atol=1e-6)
  # Garbage at the padded positions inside the original length is ignored too.
  scrambled = hidden.copy()
  scrambled[mask == 0] = 1e3
  again = np.asarray(heads.pool(jnp.asarray(scrambled), jnp.asarray(mask), "mean"))
  np.testing.assert_allclose(again, short, rtol=1e-6, atol=1e-6)


def test_mean_pool_all_padding_row_is_finite():
  hidden, mask = _hidden_and_mask([0, 2], 3)
  out = np.asarray(heads.pool(jnp.asarray(hidden), jnp.asarray(mask), "mean"))
  assert np.isfinite(out).all()


def test_cls_pool_is_first_token():
  hidden, mask = _hidden_and_mask([1, 3], 4)
  out = np.asarray(heads.pool(jnp.asarray(hidden), jnp.asarray(mask), "cls"))
  np.testing.assert_array_equal(out, hidden[:, 0])


def test_unknown_pooling_raises():
  hidden, mask = _hidden_and_mask([1], 2)
  with pytest.raises(ValueError, match="max"):
    heads.pool(jnp.asarray(hidden), jnp.asarray(mask), "max")
  assert set(heads.POOLINGS) == {"cls", "mean"}


def test_cosine_values_symmetry_and_zero_vector():
  rng = np.random.default_rng(3)
  u = rng.normal(size=(5, 7)).astype(np.float32)
  v = rng.normal(size=(5, 7)).astype(np.float32)
  got = np.asarray(heads.cosine(jnp.asarray(u), jnp.asarray(v)))
  want = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(heads.cosine(jnp.asarray(v), jnp.asarray(u))), got, rtol=1e-6, atol=1e-7
  )
  np.testing.assert_allclose(
    np.asarray(heads.cosine(jnp.asarray(3 * u), jnp.asarray(u))), 1.0, rtol=1e-5
  )
  zero = np.asarray(heads.cosine(jnp.zeros((2, 7)), jnp.asarray(v[:2])))
  assert np.isfinite(zero).all() and np.allclose(zero, 0.0)


@pytest.fixture(scope="module")
def head_setup():
  s, h = 6, 8
  pooled = jax.random.normal(jax.random.PRNGKey(0), (s, h))
  module = heads.TaskHeads(dropout=0.5)
  params = module.init(jax.random.PRNGKey(1), pooled)["params"]
  return module, params, pooled


def test_task_heads_shapes(head_setup):
  module, params, pooled = head_setup
  out = module.apply({"params": params}, pooled)
  assert set(out) == {"sst", "quora", "sts"}
  assert out["sst"].shape == (6, heads.NUM_SST_CLASSES) == (6, 5)
  assert out["quora"].shape == (3,)
  assert out["sts"].shape == (3,)
  assert set(params) >= {"sst", "quora"}


def test_sts_is_five_cosine_of_pair_halves_and_symmetric(head_setup):
  module, params, pooled = head_setup
  p = np.asarray(pooled)
  out = module.apply({"params": params}, pooled)
  u, v = p[:3], p[3:]
  want = 5 * (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  np.testing.assert_allclose(np.asarray(out["sts"]), want, rtol=1e-5, atol=1e-5)
  swapped = jnp.concatenate([pooled[3:], pooled[:3]])
  out_swapped = module.apply({"params": params}, swapped)
  np.testing.assert_allclose(
    np.asarray(out_swapped["sts"]), np.asarray(out["sts"]), rtol=1e-6, atol=1e-6
  )
  same = module.apply({"params": params}, jnp.concatenate([pooled[:3], pooled[:3]]))
  np.testing.assert_allclose(np.asarray(same["sts"]), 5.0, rtol=1e-5)


def test_heads_rows_are_independent(head_setup):
  """Row i's sst output, and pair i's quora/sts outputs, depend only on their rows."""
  module, params, pooled = head_setup
  out = module.apply({"params": params}, pooled)
  changed = pooled.at[2].set(pooled[2] * -3.0 + 1.0).at[5].set(7.0)  # Rows of pair 2.
  out2 = module.apply({"params": params}, changed)
  np.testing.assert_allclose(
    np.asarray(out2["sst"])[[0, 1, 3, 4]],
    np.asarray(out["sst"])[[0, 1, 3, 4]],
    rtol=1e-6,
    atol=1e-6,
  )
  for k in ("quora", "sts"):
    np.testing.assert_allclose(
      np.asarray(out2[k])[:2], np.asarray(out[k])[:2], rtol=1e-6, atol=1e-6
    )
    assert not np.allclose(np.asarray(out2[k])[2], np.asarray(out[k])[2])


def test_dropout_only_when_not_deterministic(head_setup):
  module, params, pooled = head_setup
  a = module.apply({"params": params}, pooled, deterministic=True)
  b = module.apply({"params": params}, pooled, deterministic=True)
  np.testing.assert_array_equal(np.asarray(a["sst"]), np.asarray(b["sst"]))
  c = module.apply(
    {"params": params}, pooled, deterministic=False, rngs={"dropout": jax.random.PRNGKey(9)}
  )
  assert not np.allclose(np.asarray(c["sst"]), np.asarray(a["sst"]))
