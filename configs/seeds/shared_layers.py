"""Seed (e): parameter sharing in the heads: one shared hidden layer before every output.

Run: python main.py --config=configs/seeds/shared_layers.py --workdir=runs/seeds/shared_layers
configs/default.py with heads.kind="shared": every task's output layer reads
gelu(shared_dense(p)), one H-wide layer common to the three tasks, instead of the pooled
vector p itself.
Report: ../shared/seeds/000_59dc5f5e829aee3b.txt, §5.4.2 (parameter sharing; BERT-base):
dev 0.473 / 0.621 / 0.442. Ours: results ledgers (README, Results).
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.heads.kind = "shared"
  return config
