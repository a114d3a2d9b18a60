"""Recipe ladder, rung 1: full fine-tuning (every encoder weight trains) instead of LoRA.

Change: adapter.kind=full with the usual fine-tuning learning rate (5e-5; LoRA's 1e-3
would wreck the pretrained weights).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  return config
