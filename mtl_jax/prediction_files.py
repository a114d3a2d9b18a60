"""Prediction files in the CS224N minBERT output format.

The format is the starter code's (gpoesia/minbert-default-final-project,
evaluation.py `test_model_multitask`), byte for byte, so its graders read
ours: a header `id \\t <Column> \\n`, then one `<id> , <prediction> \\n` per
example. Values are formatted as the starter's numpy values print: sst an int
class ("3"), quora a float 0/1 ("1.0"), sts a float ("2.75").
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from mtl_jax import tasks

# Each task's header column (mtl_jax.tasks: TaskSpec.prediction_column).
HEADERS = {t.name: t.prediction_column for t in tasks.SPECS.values()}


def output_filename(task: str, split: str) -> str:
  """The starter's file name for a task and split, e.g. 'para-dev-output.csv'."""
  return f"{tasks.get(task).prediction_prefix}-{split}-output.csv"


def _format(task: str, value) -> str:
  spec, v = tasks.get(task), float(value)
  if spec.label == "class":
    if not (v.is_integer() and 0 <= v < spec.num_classes):
      raise ValueError(f"{task} prediction {value!r} is not a class in 0..{spec.num_classes - 1}")
    return str(int(v))
  if spec.label == "binary":
    if v not in (0.0, 1.0):
      raise ValueError(f"{task} prediction {value!r} is not 0 or 1")
    return repr(v)
  if not math.isfinite(v):
    raise ValueError(f"{task} prediction {value!r} is not finite")
  return repr(v)  # shortest text that round-trips


def write_predictions(path: str, task: str, ids: Sequence[str], predictions) -> None:
  """Writes atomically (temp file + os.replace) so a crash never leaves half a file."""
  tasks.get(task)  # An unknown task: ValueError.
  preds = np.asarray(predictions).ravel()
  if len(ids) != preds.size:
    raise ValueError(f"{len(ids)} ids but {preds.size} predictions")
  lines = [f"id \t {tasks.get(task).prediction_column} \n"]
  for i, p in zip(ids, preds):
    i = str(i)
    if not i or any(c.isspace() or c == "," for c in i):
      raise ValueError(f"id {i!r} cannot be written (empty, or has a space or comma)")
    lines.append(f"{i} , {_format(task, p)} \n")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Same directory, so os.replace is an atomic rename; plain open() keeps
  # the usual umask permissions (mkstemp would make the file owner-only).
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.writelines(lines)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_predictions(path: str) -> tuple[str, list[str], np.ndarray]:
  """Reads a file written by write_predictions: (task, ids, float64 values)."""
  with open(path, encoding="utf-8") as f:
    header, *rows = f.read().splitlines()
  column = header.split("\t")[-1].strip()
  tasks = [t for t, h in HEADERS.items() if h == column]
  if header.split("\t")[0].strip() != "id" or not tasks:
    raise ValueError(f"{path}: not a prediction file (header {header!r})")
  ids, values = [], []
  for n, row in enumerate(rows, start=2):
    parts = row.split(" , ")
    if len(parts) != 2:
      raise ValueError(f"{path}:{n}: expected '<id> , <value>', got {row!r}")
    ids.append(parts[0].strip())
    values.append(float(parts[1]))
  return tasks[0], ids, np.asarray(values, dtype=np.float64)
