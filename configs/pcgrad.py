"""The main job (`make train`): bundled model + LoRA (q, v; r=8, alpha=16) + PCGrad + AdamW.

Run: python main.py --config=configs/pcgrad.py --workdir=runs/pcgrad
Same budget and seed as configs/default.py, which is its summed-loss baseline; dev scores
of both are in the README.
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "pcgrad"
  return config
