"""Recipe ladder, rung 4: heads at 10x the learning rate (5e-4 vs the encoder's 5e-5).

Builds on r3_quora_cross. Change: train.head_lr_multiplier=10. The heads start from
random weights; at the encoder's fine-tuning rate they learn slowly in 300 steps.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.head_lr_multiplier = 10.0
  return config
