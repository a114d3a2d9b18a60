"""Times the train step on a run's real batches, unpacked vs packed (no evaluation, no
checkpoints): the same steps of the same config, each layout compiled once per shape.

  python scripts/time_packing.py --config=configs/pcgrad.py --first=0 --steps=8

For each layout: the distinct shapes among the steps, the first pass's wall time (compiles
included) and the second pass's (the same steps again, compiled), per step.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from mtl_jax import specs, xla_options  # noqa: E402
from mtl_jax.data import batching, packing, schedules  # noqa: E402
from mtl_jax.models import hf_io  # noqa: E402
from mtl_jax.step import make_train_step  # noqa: E402
from mtl_jax.tasks import TASKS  # noqa: E402
from mtl_jax.train import init_state, load_data  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/pcgrad.py", "A configs/*.py file.", lock_config=True
)
_FIRST = flags.DEFINE_integer("first", 0, "First step of the run to time.")
_STEPS = flags.DEFINE_integer("steps", 8, "Steps to time.")


def main(argv):
  del argv
  config = _CONFIG.value
  specs.validate(config)
  data = load_data(config, hf_io.load_tokenizer(config.model.path))["train"]
  buckets = tuple(config.train.length_buckets)
  schedule = specs.train_schedule(
    config,
    tuple(len(d) for d in data),
    tuple(batching.examples_per_batch(d, config.train.seqs_per_task) for d in data),
  )
  steps = range(_FIRST.value, _FIRST.value + _STEPS.value)
  plan = packing.PackPlan(packing.row_lengths(buckets))
  layouts = {"unpacked": None, "packed": plan}
  for name, layout in layouts.items():
    batches = [schedules.train_batch(data, s, schedule, buckets, layout) for s in steps]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    computed = sum(b["attention_mask"].size for b in batches)
    model, state, frozen, tx = init_state(config)
    step_fn = jax.jit(
      make_train_step(model, tx, tuple(range(len(TASKS))), config.seed),
      donate_argnums=(0,),
      compiler_options=xla_options.train_step_options(),
    )
    times = []
    for _ in range(2):
      tick = time.perf_counter()
      for batch in batches:
        state, metrics = step_fn(state, frozen, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - tick)
    shapes = sorted({tuple(b["input_ids"].shape) for b in batches})
    print(
      f"{name}: steps {steps.start}-{steps.stop - 1}, {len(shapes)} shapes {shapes}, "
      f"{100 * (1 - real / computed):.1f}% padding; first pass (with compiles) "
      f"{times[0]:.1f} s, compiled {times[1] / len(batches):.2f} s/step",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
