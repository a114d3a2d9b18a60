"""How large SMART's regularizer is beside each task's loss, by perturbation size
(docs/methods.md, "SMART"): on the bundled model (configs/default.py, LoRA, unpacked) at
step 0, on the trainer's first training batch, for each epsilon with the paper's ratios
sigma : epsilon : eta = 1 : 1 : 100 (its GLUE values at epsilon = 1e-5) and K = 1:
per task, the raw loss L_t, the regularizer R_t, and ‖∇R_t‖ / ‖∇L_t‖ over the shared
(encoder) parameters.

  python -m benchmarks.smart_scale [--epsilons 1e-5,1e-3,1e-2,1e-1]   (from the repo root)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import step, train
from mtl_jax.config import defaults, run_spec
from mtl_jax.smart import SmartConfig
from mtl_jax.tasks import TASKS


def _shared_norm(grads, t: int) -> float:
  return float(jnp.sqrt(sum((g[t] ** 2).sum() for g in jax.tree.leaves(grads["encoder"]))))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--epsilons", default="1e-5,1e-3,1e-2,1e-1")
  args = parser.parse_args()
  config = defaults.get_config()
  config.train.packing = False
  spec = run_spec.build(config)
  data = train.load_data(spec, spec.tokenizer())
  batch = train.train_batches(spec, data["train"])(0)
  model, state, frozen, _ = train.init_state(spec)
  keys = step.dropout_keys(config.seed, 0, len(TASKS))

  def per_task(smart):
    loss = jax.value_and_grad(step.make_loss_fn(model, smart))
    return jax.jit(jax.vmap(loss, in_axes=(None, None, 0, 0, 0)))

  args_ = (state.trainable, frozen, batch, jnp.arange(len(TASKS)), keys)
  plain, plain_grads = per_task(None)(*args_)
  print(
    "task   L_t    "
    + "  ".join(f"eps={e}: R_t, |grad R|/|grad L|" for e in args.epsilons.split(","))
  )
  rows = {t: f"{name:5s} {float(plain[t]):.4f}" for t, name in enumerate(TASKS)}
  for eps in (float(e) for e in args.epsilons.split(",")):
    smart = SmartConfig(weight=1.0, epsilon=eps, step_size=100 * eps, noise_std=eps)
    objective, grads = per_task(smart)(*args_)
    reg = jax.tree.map(jnp.subtract, grads, plain_grads)
    for t in range(len(TASKS)):
      ratio = _shared_norm(reg, t) / _shared_norm(plain_grads, t)
      rows[t] += f"   {float(objective[t] - plain[t]):.2e}, {ratio:.2e}"
  for t in range(len(TASKS)):
    print(rows[t])
  print(f"{np.prod(batch['input_ids'].shape)} token slots per step")


if __name__ == "__main__":
  main()
