"""Recipe ladder, rung 7: layer-wise learning-rate decay 0.9 (lower layers learn slower).

Builds on r3_quora_cross. Change: train.layer_lr_decay=0.9 (layer i of 6 at 0.9^(6-i),
the embeddings at 0.9^7 = 0.48 times the learning rate).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.layer_lr_decay = 0.9
  return config
