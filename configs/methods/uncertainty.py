"""Methods study, `uncertainty`: uncertainty weighting (Kendall et al. 2018) of the summed loss.

configs/default.py (bundled MiniLM, LoRA q,v r=8, 300 steps, grad.method=sum) with
train.loss_weighting=uncertainty: learned per-task log-variances scale each task's loss.
The study runs it at seeds 0, 1, 2 (docs/results.md); one run:
python main.py --config=configs/methods/uncertainty.py --config.seed=0 --workdir=runs/x
"""

from mtl_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.train.loss_weighting = "uncertainty"
  return config
