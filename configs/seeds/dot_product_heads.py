"""Seed (c): dot-product pair heads: Quora sigmoid(u · v), STS u · v (unscaled).

Run: python main.py --config=configs/seeds/dot_product_heads.py --workdir=runs/seeds/dot_product_heads
configs/default.py with both pair heads replaced by the dot product of the two sentence
vectors: for Quora it is the logit (the sigmoid is inside the binary cross-entropy), for
STS the raw score regressed onto the 0..5 label. Neither head has parameters.
Report: ../shared/seeds/003_8064e1afc05851e5.txt, §4.2 (a linear layer before the dot
product) and Table 1 (baseline + additive loss; BERT-base): dev 0.495 / 0.726 / 0.423.
Ours: results ledgers (README, Results).
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.heads.quora = "dot"
  config.heads.sts = "dot"
  return config
