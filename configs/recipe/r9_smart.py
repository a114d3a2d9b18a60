"""Recipe ladder, rung 9: SMART adversarial smoothness regularization.

Builds on r3_quora_cross. Change: train.smart.weight=1 with epsilon 1e-3, step 0.1 and
noise 1e-3 (docs/methods.md "SMART": the paper's epsilon 1e-5 moves MiniLM's word vectors
by ~2e-4 of their size and its regularizer does nothing). Costs ~2.6x a full step.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.smart.weight = 1.0
  config.train.smart.epsilon = 1e-3
  config.train.smart.step_size = 0.1
  config.train.smart.noise_std = 1e-3
  return config
