"""Variants of the train step, timed alternately in one process (so background load
affects every variant alike). BENCHMARKS.md, "Where the time goes".

  python -m benchmarks.compare_step lora|full [--variants xla|gelu] [--rounds 4]
      (from the repo root)

`xla`: the step compiled with different XLA:CPU options (YNNPACK fusions).
`gelu`: BERT's exact GELU through erfc (`jax.nn.gelu(approximate=False)`) or through erf
(mtl_jax.models.gelu), each compiled with the trainer's XLA options.
The third fix, huge pages, needs a fresh process per variant; compare with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0 python -m mtl_jax.bench ...` against the default.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from configs import default
from mtl_jax import train, xla_options
from mtl_jax.bench import random_batch
from mtl_jax.models import bert, gelu
from mtl_jax.step import make_train_step

XLA_VARIANTS = {
  "default XLA": {},
  "YNNPACK individual dots only": {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  },
  "no YNNPACK fusions": {"xla_cpu_experimental_ynn_fusion_type": ""},
}
GELU_VARIANTS = {
  "GELU via erfc": lambda x: jax.nn.gelu(x, approximate=False),
  "GELU via erf (ours)": gelu.exact_gelu,
}


def compile_step(mode: str, options: dict):
  """The PCGrad step on the bench's shapes (3 tasks x 64 sequences x 64 tokens)."""
  config = default.get_config()
  config.adapter.kind = mode
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(config)
  batch = random_batch(3, 64, 64, model.config.vocab_size)
  step = jax.jit(make_train_step(model, tx, (0, 1, 2), 0))
  return step.lower(state, frozen, batch).compile(compiler_options=options), state, frozen, batch


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["lora", "full"])
  parser.add_argument("--variants", choices=["xla", "gelu"], default="xla")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  compiled = {}
  if args.variants == "xla":
    for name, options in XLA_VARIANTS.items():
      compiled[name] = compile_step(args.mode, options)
  else:
    for name, fn in GELU_VARIANTS.items():
      bert.exact_gelu = fn  # The encoder looks the function up when it is traced.
      compiled[name] = compile_step(args.mode, xla_options.train_step_options() or {})
  times = {name: [] for name in compiled}
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
      f"loss {losses[name]:.7f}"
    )


if __name__ == "__main__":
  main()
