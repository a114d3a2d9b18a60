"""DoRA (Liu et al. 2024) on query and value, r=8, alpha=16 (summed loss; otherwise as default).

Run: python main.py --config=configs/dora.py --workdir=runs/dora
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.adapter.kind = "dora"
  return config
