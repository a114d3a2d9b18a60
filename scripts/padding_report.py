"""Padding share and compiled shapes of a run's train batches, packed and unpacked, without
training: builds every step's batch from the real data exactly as the trainer does.

  python scripts/padding_report.py --config=configs/pcgrad.py
  python scripts/padding_report.py --config=configs/default.py --config.train.length_grouping=0

Prints, for the unpacked layout, the packed one with one lane per task and the run's own
(packed, with the slots the trainer chooses): real and computed tokens over the run's
train.steps steps, the padding share, and each distinct batch shape [lanes, rows, L] with
its number of steps (XLA compiles one train step per shape). Also the floor of any layout
with one lane per task: the step's tokens if every task had as many as its largest; and
the same counts for the evaluation batches of the dev sets.
"""

from __future__ import annotations

import collections
import os
import sys

from absl import app
from ml_collections import config_flags

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from mtl_jax import specs  # noqa: E402
from mtl_jax.data import batching, packing, schedules  # noqa: E402
from mtl_jax.models import hf_io  # noqa: E402
from mtl_jax.train import load_data, train_batches  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/default.py", "A configs/*.py file.", lock_config=True
)


def report(config, devices: int = 1) -> dict:
  """{layout: (real tokens, computed tokens, Counter of batch shapes)} over the run's steps,
  layouts "unpacked", "packed 1 lane/task" (one lane per task), "packed" (the run's own:
  with the slots `train.train_batches` chooses) and "floor" (computed = T x the largest
  task's tokens: the least any one-lane-per-task layout computes); and "dev unpacked",
  "dev packed": the evaluation batches of the dev sets."""
  splits = load_data(config, hf_io.load_tokenizer(config.model.path))
  batches = train_batches(config, splits["train"], devices)
  schedule, buckets = batches.schedule, batches.buckets
  one_lane = packing.PackPlan(packing.row_lengths(buckets), devices)  # Packed, no slots.
  layouts = ("unpacked", "packed 1 lane/task", "packed", "floor")
  out = {k: [0, 0, collections.Counter()] for k in layouts}
  for step in range(config.train.steps):
    batch = schedules.train_batch(batches.datasets, step, schedule, buckets)
    real = int(batch["attention_mask"].sum())
    per_task = batch["attention_mask"].sum(axis=(1, 2))
    for name, layout in (
      ("unpacked", batch),
      ("packed 1 lane/task", packing.pack_stack(batch, one_lane)),
      ("packed", batches(step)),
    ):
      out[name][0] += real
      out[name][1] += layout["attention_mask"].size
      out[name][2][tuple(layout["input_ids"].shape)] += 1
    out["floor"][0] += real
    out["floor"][1] += int(len(per_task) * per_task.max())
  eval_plan = packing.PackPlan(one_lane.lengths[-1:], devices)  # As pack_plan(for_eval=True).
  for name, layout in (("dev unpacked", None), ("dev packed", eval_plan)):  # Evaluation.
    out[name] = [0, 0, collections.Counter()]
    for d in splits["dev"]:
      for _, batch in batching.eval_batches(d, config.eval.seqs_per_batch, buckets, layout):
        out[name][0] += int(batch["attention_mask"].sum())
        out[name][1] += batch["attention_mask"].size
        out[name][2][tuple(batch["input_ids"].shape)] += 1
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  specs.validate(config)
  for name, (real, computed, shapes) in report(config).items():
    print(
      f"{name:12s} {real:,} real of {computed:,} computed tokens: "
      f"{100 * (1 - real / computed):.1f}% padding" + (f"; {len(shapes)} shapes" if shapes else "")
    )
    for shape, n in sorted(shapes.items()):
      print(f"    {list(shape)}: {n} {'batches' if name.startswith('dev') else 'steps'}")


if __name__ == "__main__":
  app.run(main)
