"""Multi-task fine-tuning of BERT: `python main.py --config=configs/pcgrad.py --workdir=runs/x`.

Override any config key on the command line, e.g. `--config.train.steps=50`; an unknown key
is refused at once. The command line lives in mtl_jax/tools/train_cli.py (also installed as
`mtl-jax train`); the loop in mtl_jax/train.py; the config keys in mtl_jax/config/defaults.py.
"""

from mtl_jax.tools import train_cli

if __name__ == "__main__":
  train_cli.run()
