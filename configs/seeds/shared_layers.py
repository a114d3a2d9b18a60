"""Seed (e): parameter sharing in the heads: one shared hidden layer before every output.

Run: python main.py --config=configs/seeds/shared_layers.py --workdir=runs/seeds/shared_layers
configs/default.py with heads.kind="shared": every task's output layer reads
gelu(shared_dense(p)), one H-wide layer common to the three tasks, instead of the pooled
vector p itself.
Report: not identified offline, so no dev numbers are quoted. Ours: README, Results.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.heads.kind = "shared"
  return config
