"""Recipe ladder, rung 5: evaluate and predict with an exponential moving average of the weights.

Builds on r3_quora_cross. Change: train.ema_decay=0.999 (with the warm-up
min(0.999, (1+n)/(10+n)), which sets the effective decay in a run this short: ~0.97 at step 300).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.ema_decay = 0.999
  return config
