"""Methods study, `sum`: the baseline: the tasks' gradients are summed.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps) with grad.method=sum and the
method's default arguments (mtl_jax.grad). The study runs it at seeds 0, 1, 2
(docs/results.md); one run of it:
  python main.py --config=configs/methods/sum.py --config.seed=0 --workdir=runs/methods/sum
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "sum"
  return config
