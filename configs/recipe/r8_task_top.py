"""Recipe ladder, rung 8: the top encoder layer task-specific (each task its own copy).

Builds on r3_quora_cross. Change: adapter.task_specific_top=1: layer 5 is copied per task
from the pretrained weights, so the tasks share layers 0-4 only (+2 x 1.8M parameters).
"""

from mtl_jax.config import defaults


def get_config():
  config = defaults.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  config.heads.pairs = "quora=cross"
  config.adapter.task_specific_top = 1
  return config
