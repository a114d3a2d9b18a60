"""Multi-task fine-tuning of BERT: `python main.py --config=configs/pcgrad.py --workdir=runs/x`.

Override any config key on the command line, e.g. `--config.train.steps=50`; an unknown key
is refused at once. The command line lives in mtl_jax/tools/train_cli.py (also installed as
`mtl-jax train`); the loop in mtl_jax/train.py; the config keys in mtl_jax/config/defaults.py.
"""

from mtl_jax.runtime import hugepages

if __name__ == "__main__":
  # Re-executes (runtime/hugepages.py) before the trainer's imports, which would otherwise
  # run twice: jax, flax, orbax and scipy take seconds of CPU to import.
  hugepages.reexec_with_huge_pages()
  from mtl_jax.tools import train_cli

  train_cli.run()
