"""Linear probing: the encoder is frozen, only the task heads train (summed loss).

Run: python main.py --config=configs/probe.py --workdir=runs/probe
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.adapter.kind = "probe"
  return config
