"""Recipe ladder, rung 2: cross-encoded sentence pairs ([CLS] s1 [SEP] s2 [SEP], one sequence).

Change: heads.pairs=cross, with the linear-on-the-pair heads it needs (quora and sts
"features"); Quora and STS both cross-encoded.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "cross"
  config.heads.quora = "features"
  config.heads.sts = "features"
  return config
