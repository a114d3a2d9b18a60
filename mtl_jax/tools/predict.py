"""A trained run's predictions for new text, in the CS224N output format.

  python -m mtl_jax.predict --workdir=runs/pcgrad --task=sst --input=reviews.txt --output=sst.csv

`--input` is either a file in the task's CS224N format (tab-separated, a header with `id`
and the task's sentence column(s): `sentence` for sst, `sentence1` and `sentence2` for quora
and sts; the label column `sentiment` / `is_duplicate` / `similarity` optional), or plain
text: one sentence (sst) or one tab-separated sentence pair (quora, sts) a line, whose ids
are then the line numbers. A blank line of plain text is refused, naming it, so that output
row i is always input line i. With labels, the task's dev metric is printed too.
Predictions are written by the code that writes a run's dev and test predictions.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

from mtl_jax import evaluate, tasks
from mtl_jax import scores as metrics
from mtl_jax.data import batching, files
from mtl_jax.data.files import DataError, TaskSplit
from mtl_jax.runtime import parallel
from mtl_jax.tools import cli

FLAGS = flags.FlagValues()  # This tool's flags (mtl_jax.tools.cli).
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory (its latest checkpoint).", flag_values=FLAGS
)
_TASK = flags.DEFINE_string(
  "task",
  None,
  "Which task's head predicts (one of the run's config.task_order).",
  flag_values=FLAGS,
)
_INPUT = flags.DEFINE_string(
  "input", None, "CS224N task file, or plain text (a sentence or pair a line).", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Where to write the predictions (CS224N format).", flag_values=FLAGS
)
cli.mark_required(FLAGS, ["workdir", "task", "input", "output"])


def read_input(path: str, task: str | tasks.TaskSpec) -> TaskSplit:
  """The task's CS224N file (labels if present), or plain text lines with line-number ids
  (`task`: its spec, or a CS224N task's name)."""
  spec = task if isinstance(task, tasks.TaskSpec) else tasks.get(task)
  task = spec.name
  wanted = spec.sentence_columns
  header = files.read_header(path)
  if "id" in header and all(c in header for c in wanted):
    return files.read_task_file(path, spec, "input", has_labels=None, strict=True)
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8: {e}") from None
  if not lines:
    raise DataError(f"{path}: empty file")
  parts = [line.split("\t") for line in lines]
  width = len(wanted)
  blank = [n for n, p in enumerate(parts, 1) if not all(s.strip() for s in p)]
  wrong = [n for n, p in enumerate(parts, 1) if len(p) != width]
  if wrong or blank:
    what = "one sentence" if width == 1 else "two tab-separated sentences"
    bad = sorted(set(wrong + blank))
    raise DataError(
      f"{path}: line(s) {bad[:10]} do not hold {what} ({task} input; or give a "
      f"CS224N file with a header: id, {', '.join(wanted)})"
    )
  columns = list(zip(*[[s.strip() for s in p] for p in parts]))
  return TaskSplit(
    task=task,
    split="input",
    path=path,
    ids=[str(n) for n in range(1, len(lines) + 1)],
    sentences1=list(columns[0]),
    sentences2=list(columns[1]) if width == 2 else None,
    labels=None,
    skipped=[],
    spec=spec,
  )


def predict_file(
  workdir: str, task: str, input_path: str, output_path: str
) -> dict[str, float | str]:
  """Writes the predictions of `workdir`'s latest checkpoint; returns metrics if labelled
  (a metric undefined on the labels, as Pearson's of equal labels: why, instead of a value)."""
  from mtl_jax import train

  cli.check_output(output_path)  # Before the slow restore.
  mesh = parallel.make_mesh()
  spec, model, params = train.load_trained(workdir, mesh.size)
  config = spec.config
  task_spec = spec.task(task)  # One of the run's tasks (ConfigError naming them otherwise).
  split = read_input(input_path, task_spec)
  data = batching.encode(spec.tokenizer(), split, config.model.max_length, spec.cross_encoded(task))
  predict_fn = parallel.data_parallel(evaluate.make_predict_fn(model), mesh, 0)
  # Batched as the run's own evaluation: packed if it trained packed (then no batch is
  # padded to a bucket past the model's position table).
  buckets = tuple(config.train.length_buckets)
  preds = evaluate.predict_split(
    predict_fn, params, data, config.eval.seqs_per_batch, buckets, spec.eval_plan
  )
  evaluate.write_task_predictions(output_path, data, preds)
  if split.labels is None:
    return {}
  why = files.undefined_metric(split)
  if why is not None:  # Scored 0 it would read as a measurement.
    return {task_spec.metric: f"undefined: {input_path} {why}"}
  return metrics.evaluate_task(task_spec, np.asarray(preds), split.labels)[task]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    scores = predict_file(_WORKDIR.value, _TASK.value, _INPUT.value, _OUTPUT.value)
  except (OSError, ValueError) as e:  # Incl. DataError, CheckpointError, ConfigError.
    sys.exit(f"error: {e}")
  print(f"wrote {_OUTPUT.value}")
  for name, value in scores.items():
    print(f"{_TASK.value} {name}: {value if isinstance(value, str) else f'{value:.4f}'}")


if __name__ == "__main__":
  cli.run(main, FLAGS)
