"""Recipe ladder, rung 11: annealed task sampling, one task per step.

Builds on r3_quora_cross. Change: train.schedule=annealed (Stickland & Murray 2019, as seed
report 003 used it): each step trains one task, drawn with p_t ∝ B_t^α, α annealed from 1
to 0.2 over the epochs (mtl_jax/data/schedules.py). A step then holds one task's batch, so
the run takes 900 steps: the 900 task batches of r3's 300 all-task steps, the same
examples budget. The summed loss (r3's), as a one-task schedule requires.
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.train.schedule = "annealed"
  config.train.steps = 900
  return config
