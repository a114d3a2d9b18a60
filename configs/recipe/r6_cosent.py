"""Recipe ladder, rung 6: CoSENT loss for the bi-encoded STS task instead of squared error.

Builds on r3_quora_cross. Change: heads.sts_loss=cosent (rank the batch's pairs by their
gold score, lambda 20).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.heads.sts_loss = "cosent"
  return config
