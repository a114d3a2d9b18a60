"""PALs (Stickland & Murray 2019): a projected-attention layer per task in every encoder layer,
on a frozen encoder; the task layers and heads train (summed loss, default budget and seed).

Run: python main.py --config=configs/pals.py --workdir=runs/pals
Sizes scale with the hidden size: V_E 384 -> 102, 6-head attention, V_D 102 -> 384 on the
bundled MiniLM (204 on BERT-base). `--config.adapter.kind=full --config.train.learning_rate=5e-5`
trains the encoder too, as the paper did; `--config.adapter.task_layers=low_rank` gives their
low-rank layers instead.
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.adapter.kind = "probe"
  config.adapter.task_layers = "pals"
  return config
