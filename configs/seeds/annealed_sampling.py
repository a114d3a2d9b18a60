"""Seed (f): Quora undersampled to 20k pairs per epoch, annealed task sampling.

Run: python main.py --config=configs/seeds/annealed_sampling.py --workdir=runs/seeds/annealed_sampling
Needs train.schedule (issue 5): both of this seed's settings are task-sampling schedules,
which mtl_jax does not have yet, and nothing else of its setting is known, so until then
this config is configs/default.py (every step holds a batch of every task). On our data the
undersampling would change nothing: quora-train.csv holds 16,214 pairs, fewer than 20k.
Report: not identified offline, so no dev numbers are quoted. Ours: README, Results.
"""

from configs import default


def get_config():
  return default.get_config()
