"""Methods study, `cagrad`: CAGrad (Liu et al. 2021), c = 0.4: the update near the mean
gradient that most improves the worst task.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps) with grad.method=cagrad and the
method's default arguments (mtl_jax.grad). The study runs it at seeds 0, 1, 2
(docs/results.md); one run of it:
  python main.py --config=configs/methods/cagrad.py --config.seed=0 --workdir=runs/methods/cagrad
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "cagrad"
  return config
