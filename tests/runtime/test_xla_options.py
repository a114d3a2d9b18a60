"""The train step's XLA options change speed, not results."""

import jax
import numpy as np

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.runtime import xla_options
from mtl_jax.step import make_train_step


def test_cpu_turns_off_ynnpack_fusions_and_other_backends_get_none():
  expected = {"xla_cpu_experimental_ynn_fusion_type": ""}
  options = xla_options.train_step_options()
  assert options == (expected if jax.default_backend() == "cpu" else None)


def test_train_step_with_the_options_matches_the_default_compilation(tiny_bert_dir):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  config.model.max_length = 64  # The tiny model's positions.
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(run_spec.build(config))
  rng = np.random.default_rng(0)
  t, s, length = 3, 8, 16
  batch = {
    "input_ids": rng.integers(5, 128, (t, s, length)).astype(np.int32),
    "attention_mask": np.ones((t, s, length), np.int32),
    "token_type_ids": np.zeros((t, s, length), np.int32),
    "labels": rng.integers(0, 2, (t, s)).astype(np.float32),
    "weights": np.ones((t, s), np.float32),
  }
  step = make_train_step(model, tx, (0, 1, 2), 0)
  plain, _ = jax.jit(step)(state, frozen, batch)
  tuned, _ = jax.jit(step, compiler_options=xla_options.train_step_options())(state, frozen, batch)
  for a, b in zip(jax.tree.leaves(plain.trainable), jax.tree.leaves(tuned.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
