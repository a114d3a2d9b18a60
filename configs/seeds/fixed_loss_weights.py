"""Seed (d): fixed loss weights SST 4, Quora 1, STS 10.

Run: python main.py --config=configs/seeds/fixed_loss_weights.py --workdir=runs/seeds/fixed_loss_weights
configs/default.py with the summed loss replaced by 4·L_sst + 1·L_quora + 10·L_sts
(mtl_jax.grad.fixed, weights in TASKS order). As for every method, the weights combine the
tasks' gradients of the shared encoder; each head still gets its own task's gradient,
unweighted, which AdamW (invariant to a constant scale of a leaf's gradient) would undo
anyway.
Report: ../shared/seeds/002_402b5b2dcb3c5e82.txt (weighted losses; BERT-base): dev scores
only in figures; its text: SST below 0.54, Quora and STS above 0.8. Ours: results ledgers
(README, Results).
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "fixed"
  config.grad.kwargs.weights = (4.0, 1.0, 10.0)  # sst, quora, sts
  return config
