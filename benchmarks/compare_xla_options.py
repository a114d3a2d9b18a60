"""The train step compiled with different XLA options, timed alternately in one process
(so background load affects every variant alike). BENCHMARKS.md, "Where the time goes".

  python -m benchmarks.compare_xla_options lora|full [--rounds 4]   (from the repo root)
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from configs import default
from mtl_jax import train
from mtl_jax.step import make_train_step

VARIANTS = {
    "default XLA": {},
    "YNNPACK individual dots only": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "no YNNPACK fusions": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["lora", "full"])
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  config = default.get_config()
  config.adapter.kind = args.mode
  config.grad.method = "pcgrad"
  model, state, frozen, tx = train.init_state(config)
  rng = np.random.default_rng(0)
  t, s, length = 3, 64, 64  # The bench's shapes.
  batch = {"input_ids": rng.integers(5, model.config.vocab_size, (t, s, length)).astype(np.int32),
           "attention_mask": np.ones((t, s, length), np.int32),
           "token_type_ids": np.zeros((t, s, length), np.int32),
           "labels": rng.integers(0, 2, (t, s)).astype(np.float32),
           "weights": np.ones((t, s), np.float32)}
  step = jax.jit(make_train_step(model, tx, (0, 1, 2), 0))
  compiled = {name: step.lower(state, frozen, batch).compile(compiler_options=options)
              for name, options in VARIANTS.items()}
  times = {name: [] for name in compiled}
  losses = {}
  for _ in range(args.rounds + 1):  # The first round warms up.
    for name, fn in compiled.items():
      start = time.perf_counter()
      _, metrics = fn(state, frozen, batch)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)
      losses[name] = float(metrics["loss"])
  for name in compiled:
    print(f"{args.mode:5s} {name:30s} median {np.median(times[name][1:]):.2f} s  "
          f"loss {losses[name]:.7f}")


if __name__ == "__main__":
  main()
