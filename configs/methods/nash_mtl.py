"""Methods study, `nash_mtl`: Nash-MTL (Navon et al. 2022): task weights from the Nash
bargaining solution.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps) with grad.method=nash_mtl and the
method's default arguments (mtl_jax.grad). The study runs it at seeds 0, 1, 2
(docs/results.md); one run of it:
  python main.py --config=configs/methods/nash_mtl.py --config.seed=0 --workdir=runs/methods/nash_mtl
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "nash_mtl"
  return config
