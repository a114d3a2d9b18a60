"""LoRA (query, value; r=8, alpha=16) with the summed loss: the same run as configs/default.py,
named for the fine-tuning-mode comparison in the README (full, probe, lora, dora, pals).

Run: python main.py --config=configs/lora.py --workdir=runs/lora
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.adapter.kind = "lora"
  return config
