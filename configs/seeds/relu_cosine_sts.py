"""Seed (b): STS predicted as 5·ReLU(cos(u, v)), one seed project's best STS head.

Run: python main.py --config=configs/seeds/relu_cosine_sts.py --workdir=runs/seeds/relu_cosine_sts
configs/default.py with only the STS head changed: a negative cosine predicts similarity 0
(the bottom of the label scale) instead of a negative score.
Report: not identified offline, so no dev numbers are quoted. Ours: README, Results.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.heads.sts = "relu_cosine"
  return config
