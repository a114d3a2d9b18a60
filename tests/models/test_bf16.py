"""model.dtype=bfloat16: bf16 compute, float32 master weights, gradients and softmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.models import multitask


def _built(tiny_bert_dir: str, dtype: str):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  config.model.dtype = dtype
  spec = run_spec.model_spec(config)
  return multitask.build(spec, jax.random.key(0))


def _inputs():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, 128, size=(4, 12)), jnp.int32)
  mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [9], [5], [3]]), jnp.int32)
  return ids * mask, mask, jnp.zeros_like(ids)


def test_bfloat16_computes_in_bf16_near_float32_with_float32_weights(tiny_bert_dir):
  model32, params = _built(tiny_bert_dir, "float32")
  model16, params16 = _built(tiny_bert_dir, "bfloat16")
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params16))  # Master copy.
  inputs = _inputs()
  h32, _ = model32.apply({"params": params}, *inputs, method=model32.embed)
  h16, _ = model16.apply({"params": params}, *inputs, method=model16.embed)
  assert h32.dtype == h16.dtype == jnp.float32  # The encoder hands float32 to the heads.
  real = np.asarray(inputs[1], bool)
  diff = np.abs(np.asarray(h16, np.float32) - np.asarray(h32))[real]
  # bf16 keeps 8 mantissa bits (~0.4% per rounding); through 2 layers the hidden states
  # (LayerNorm outputs of order 1) stay within a few hundredths.
  assert diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())
  assert diff.max() > 1e-3  # It really computed in bf16 (float32 differs by ~1e-6).


def test_bfloat16_gradients_are_float32_and_close(tiny_bert_dir):
  model32, params = _built(tiny_bert_dir, "float32")
  model16, _ = _built(tiny_bert_dir, "bfloat16")
  inputs = _inputs()

  def loss(model, p):
    out = model.apply({"params": p}, *inputs)
    return jnp.sum(out["sst"].astype(jnp.float32) ** 2)

  g32 = jax.grad(lambda p: loss(model32, p))(params)
  g16 = jax.grad(lambda p: loss(model16, p))(params)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g16))
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
  cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cos > 0.99, cos  # Same direction; bf16 rounding only.
