"""Methods study, `mgda`: MGDA-UB (Sener & Koltun 2018): the min-norm point of the
convex hull of the task gradients.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps) with grad.method=mgda and the
method's default arguments (mtl_jax.grad). The study runs it at seeds 0, 1, 2
(docs/results.md); one run of it:
  python main.py --config=configs/methods/mgda.py --config.seed=0 --workdir=runs/methods/mgda
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "mgda"
  return config
