"""Recipe ladder, rung 10: three times the steps (900: ~3 epochs of Quora pairs cross-encoded).

Builds on r3_quora_cross. Change: train.steps=900, with the same warm-up share and cosine
decay, so the learning rate is annealed over the longer run.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.steps = 900
  return config
