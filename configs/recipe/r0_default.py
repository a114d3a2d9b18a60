"""Recipe ladder, rung 0: configs/default.py as it is (the baseline every rung is paired with).

The ladder (docs/recipe.md, results/recipe/) goes from the default to configs/best.py one
change per rung; each rung's file is the whole recipe up to it, so a rung runs alone:
  python main.py --config=configs/recipe/r0_default.py --workdir=runs/recipe/r0_default
"""

from mtl_jax.config import defaults


def get_config():
  return defaults.get_config()
