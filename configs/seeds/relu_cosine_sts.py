"""Seed (b): STS predicted as 5·ReLU(cos(u, v)), one seed project's best STS head.

Run: python main.py --config=configs/seeds/relu_cosine_sts.py --workdir=runs/seeds/relu_cosine_sts
configs/default.py with only the STS head changed: a negative cosine predicts similarity 0
(the bottom of the label scale) instead of a negative score.
Report: ../shared/seeds/004_5922c7091d8b1fa8.txt, §4.3 and Table 4 (SL + CS, averaged
features; BERT-base): dev 0.523 / 0.745 / 0.805. Ours: results ledgers (README, Results).
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.heads.sts = "relu_cosine"
  return config
