"""Methods study, `pcgrad`: PCGrad (Yu et al. 2020): a task's gradient loses its component
along each task gradient it conflicts with.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps) with grad.method=pcgrad and the
method's default arguments (mtl_jax.grad), its random task order seeded
by config.seed. The study runs it at seeds 0, 1, 2
(docs/results.md); one run of it:
  python main.py --config=configs/methods/pcgrad.py --config.seed=0 --workdir=runs/methods/pcgrad
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.grad.method = "pcgrad"
  # PCGrad visits the tasks in a random order drawn from its own key (grad.kwargs.seed,
  # default 0); a reference makes it follow config.seed, so --config.seed=S varies it too.
  config.grad.kwargs.seed = config.get_ref("seed")
  return config
