"""Variants of the train step, timed alternately in one process (so background load
affects every variant alike). BENCHMARKS.md, "Where the time goes".

  python -m benchmarks.compare_step lora|full
      [--variants xla|gelu|encoder|task_specific|smart|summed]
      [--rounds 4] [--base REV]   (from the repo root)

`xla`: the step compiled with different XLA:CPU options (YNNPACK fusions: all, individual
matmuls only, none as the trainer compiles, reductions only).
`gelu`: BERT's exact GELU through erfc (`jax.nn.gelu(approximate=False)`) or through erf
(mtl_jax.models.gelu), each compiled with the trainer's XLA options.
`task_specific`: the shared model against the top 2 layers copied per task
(`adapter.task_specific_top=2`; docs/methods.md, "Task-specific groups").
`smart`: the trainer's step without and with SMART's regularizer (train.smart, weight 1,
the paper's epsilon, step size and noise), K = 1 and 2 ascent steps: its cost per step.
`summed`: the gradient of the summed loss three ways: one gradient of the summed loss (the
task-blind step, no per-task gradients), the per-lane gradients summed (`mtl_jax.bench`'s
`summed`: the trainer's `sum` step without its gradient statistics), and the trainer's `sum`
step with the statistics (as on every logged step): which formulation is faster, and what
the statistics cost.
`encoder`: the checkout's Flax BERT (mtl_jax/models/bert.py) against that file at git
revision --base (e.g. `2c09f1c`, before the token-major hidden states), the rest of the
step the same.
Every variant runs with huge pages, as the trainer does (mtl_jax/runtime/hugepages.py). That fix
itself needs a fresh process per variant: compare
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0 python -m mtl_jax.bench ...` with the default.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.models import bert, gelu, multitask
from mtl_jax.runtime import hugepages, machine, xla_options
from mtl_jax.smart import SmartConfig
from mtl_jax.step import TrainState, dropout_keys, lanes, make_loss_fn, make_train_step
from mtl_jax.tools.bench import random_batch

XLA_VARIANTS = {
  "default XLA": {},
  "YNNPACK individual dots only": {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  },
  "no YNNPACK fusions": {"xla_cpu_experimental_ynn_fusion_type": ""},
  "YNNPACK reductions only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
}
GELU_VARIANTS = {
  "GELU via erfc": lambda x: jax.nn.gelu(x, approximate=False),
  "GELU via erf (ours)": gelu.exact_gelu,
}

SMART_VARIANTS = {
  "plain": None,
  "SMART K=1": SmartConfig(weight=1.0, ascent_steps=1),
  "SMART K=2": SmartConfig(weight=1.0, ascent_steps=2),
}

# --variants: (module, the name in it that the step looks up when traced, its values).
PATCHED_NAMES = {
  "gelu": (bert, "exact_gelu", GELU_VARIANTS),  # The encoder looks the function up.
}


def compile_step(
  mode: str, options: dict, task_specific_top: int = 0, smart: SmartConfig | None = None
):
  """The PCGrad step on the bench's shapes (3 tasks x 64 sequences x 64 tokens)."""
  config = default.get_config()
  config.adapter.kind = mode
  config.adapter.task_specific_top = task_specific_top
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(run_spec.build(config))
  batch = random_batch(3, 64, 64, model.config.vocab_size)
  step = jax.jit(make_train_step(model, tx, (0, 1, 2), 0, smart=smart))
  return step.lower(state, frozen, batch).compile(compiler_options=options), state, frozen, batch


def task_blind_step(model, tx, num_tasks: int, seed: int):
  """One gradient of the summed loss of the T tasks (no task axis, no method), applied by
  `tx` (an optimizer for combined gradients): on the batch and with the dropout keys of
  `make_train_step`: the bench's `summed` baseline until it became the per-lane sum."""
  loss_fn = make_loss_fn(model)

  def step(state: TrainState, frozen: dict, batch: dict) -> tuple[TrainState, dict]:
    keys = dropout_keys(seed, state.step, num_tasks)
    lane_tasks, lane_keys, _ = lanes(batch, jnp.arange(num_tasks), keys)

    def total(trainable):
      losses = jax.vmap(loss_fn, in_axes=(None, None, 0, 0, 0))(
        trainable, frozen, batch, lane_tasks, lane_keys
      )
      return losses.sum()

    loss, grads = jax.value_and_grad(total)(state.trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    return TrainState(state.step + 1, optax.apply_updates(state.trainable, updates), opt_state), {
      "loss": loss
    }

  return step


def compile_summed(mode: str, variant: str):
  """The summed-loss step on the bench's shapes, formulated as `variant` (module docstring)."""
  config = default.get_config()
  config.adapter.kind = mode
  spec = run_spec.build(config)
  model, state, frozen, tx = train.init_state(spec)
  if variant == "one gradient of the summed loss":
    tx = spec.base_optimizer()
    state = TrainState(state.step, state.trainable, tx.init(state.trainable))
    step = task_blind_step(model, tx, 3, 0)
  else:
    statistics = variant == "sum step with statistics"
    step = functools.partial(make_train_step(model, tx, (0, 1, 2), 0), statistics=statistics)
  batch = random_batch(3, 64, 64, model.config.vocab_size)
  options = xla_options.train_step_options() or {}
  compiled = jax.jit(step).lower(state, frozen, batch).compile(compiler_options=options)
  return compiled, state, frozen, batch


SUMMED_VARIANTS = (
  "one gradient of the summed loss",
  "per-lane gradients summed",
  "sum step with statistics",
)


def encoder_at(rev: str):
  """BertEncoder as mtl_jax/models/bert.py defines it at git revision `rev`."""
  source = subprocess.run(
    ["git", "show", f"{rev}:mtl_jax/models/bert.py"], capture_output=True, text=True, check=True
  ).stdout
  path = os.path.join(tempfile.mkdtemp(), "bert_at_rev.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("bert_at_rev", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up.
  spec.loader.exec_module(module)
  return module.BertEncoder


def main() -> None:
  hugepages.reexec_with_huge_pages()  # As the trainer runs (mtl_jax/runtime/hugepages.py).
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["lora", "full"])
  parser.add_argument(
    "--variants",
    choices=["xla", "gelu", "encoder", "task_specific", "smart", "summed"],
    default="xla",
  )
  parser.add_argument("--base", default="2c09f1c", help="git revision for --variants=encoder")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  compiled = {}
  if args.variants == "xla":
    for name, options in XLA_VARIANTS.items():
      compiled[name] = compile_step(args.mode, options)
  elif args.variants == "task_specific":
    for name, top in (("shared", 0), ("top 2 layers per task", 2)):
      compiled[name] = compile_step(args.mode, xla_options.train_step_options() or {}, top)
  elif args.variants == "summed":
    for name in SUMMED_VARIANTS:
      compiled[name] = compile_summed(args.mode, name)
  elif args.variants == "smart":
    for name, smart in SMART_VARIANTS.items():
      compiled[name] = compile_step(args.mode, xla_options.train_step_options() or {}, smart=smart)
  else:  # The trainer's options; a name the step looks up when traced takes each value.
    if args.variants == "encoder":  # MultitaskModel.setup looks the class up.
      module, attribute = multitask, "BertEncoder"
      variants = {f"bert.py at {args.base}": encoder_at(args.base), "checkout": bert.BertEncoder}
    else:
      module, attribute, variants = PATCHED_NAMES[args.variants]
    for name, value in variants.items():
      setattr(module, attribute, value)
      compiled[name] = compile_step(args.mode, xla_options.train_step_options() or {})
  times = {name: [] for name in compiled}
  cpu_start = machine.cpu_times()
  losses = {}
  for _ in range(args.rounds + 1):  # The first round warms up.
    for name, (fn, state, frozen, batch) in compiled.items():
      start = time.perf_counter()
      _, metrics = fn(state, frozen, batch)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)
      losses[name] = float(metrics["loss"])
  for name in compiled:
    print(
      f"{args.mode:5s} {name:30s} median {np.median(times[name][1:]):.2f} s  "
      f"loss {losses[name]:.7f}  rounds: {' '.join(f'{t:.2f}' for t in times[name][1:])}"
    )
  print(machine.steal_line(cpu_start, machine.cpu_times()))


if __name__ == "__main__":
  main()
