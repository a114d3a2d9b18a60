"""The train step computes the between-task gradient statistics only when asked (the
trainer asks on its logged steps): the update never depends on them, and asking with a
traced flag is one compiled program."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.step import make_train_step
from mtl_jax.tools import bench


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_statistics_flag_changes_the_metrics_only(tiny_bert_dir, mode):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  config.model.max_length = 64
  config.adapter.kind = mode
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(run_spec.build(config))
  batch = bench.random_batch(3, 4, 16, model.config.vocab_size)
  step = make_train_step(model, tx, (0, 1, 2), 0)

  always, always_metrics = jax.jit(step)(state, frozen, batch)
  traced = jax.jit(step)
  on, on_metrics = traced(state, frozen, batch, np.bool_(True))
  programs = traced._cache_size()
  off, off_metrics = traced(state, frozen, batch, np.bool_(False))
  assert traced._cache_size() == programs  # One program for both values of the flag.

  for a, b, c in zip(*(jax.tree.leaves(s.trainable) for s in (always, on, off))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  grad_keys = [k for k in always_metrics if k.startswith(("grad/", "group_"))]
  assert "grad/cosine" in grad_keys and any(k.startswith("group_") for k in grad_keys)
  for k in grad_keys:
    # Another program (the branch): the same statistics to float32 rounding.
    np.testing.assert_allclose(np.asarray(on_metrics[k]), np.asarray(always_metrics[k]), 1e-5, 1e-6)
    assert not np.any(np.asarray(off_metrics[k])), k  # Not computed: zeros.
  cosine = np.asarray(on_metrics["grad/cosine"])
  np.testing.assert_allclose(np.diag(cosine), 1.0, rtol=1e-5)  # Computed, not zeros.
  np.testing.assert_array_equal(np.asarray(off_metrics["loss"]), np.asarray(on_metrics["loss"]))
