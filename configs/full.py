"""Full fine-tuning: every encoder weight trains (summed loss, same budget and seed as default).

Run: python main.py --config=configs/full.py --workdir=runs/full
The learning rate is the usual one for fine-tuning all of BERT (2e-5 .. 5e-5); the adapter
configs' 1e-3 would wreck the pretrained weights.
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.adapter.kind = "full"
  config.train.learning_rate = 5e-5
  return config
