"""Recipe ladder, rung 3: only Quora cross-encoded; STS stays a bi-encoder.

Builds on r1_full. Change: heads.pairs=quora=cross (Quora read as one sequence,
[CLS] s1 [SEP] s2 [SEP], with its linear "features" head); STS keeps the bundled sentence
encoder's cosine head, which the issue's trial run found better than cross-encoding it.
Rungs r4-r11 each change one thing from this one.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  return config
