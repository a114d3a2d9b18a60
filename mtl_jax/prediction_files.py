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

# Each CS224N task's header column (mtl_jax.tasks: TaskSpec.prediction_column).
HEADERS = {t.name: t.prediction_column for t in tasks.DEFAULT}


def _spec(task: str | tasks.TaskSpec) -> tasks.TaskSpec:
  """A TaskSpec, or the CS224N task of that name (ValueError for an unknown one)."""
  return task if isinstance(task, tasks.TaskSpec) else tasks.get(task)


def output_filename(task: str | tasks.TaskSpec, split: str) -> str:
  """The starter's file name for a task and split, e.g. 'para-dev-output.csv'."""
  return f"{_spec(task).prediction_prefix}-{split}-output.csv"


def _format(spec: tasks.TaskSpec, value) -> str:
  task, v = spec.name, float(value)
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


def write_predictions(
  path: str, task: str | tasks.TaskSpec, ids: Sequence[str], predictions
) -> None:
  """Writes atomically (temp file + os.replace) so a crash never leaves half a file
  (`task`: its spec, or a CS224N task's name)."""
  spec = _spec(task)  # An unknown task: ValueError.
  preds = np.asarray(predictions).ravel()
  if len(ids) != preds.size:
    raise ValueError(f"{len(ids)} ids but {preds.size} predictions")
  lines = [f"id \t {spec.prediction_column} \n"]
  for i, p in zip(ids, preds):
    i = str(i)
    if not i or any(c.isspace() or c == "," for c in i):
      raise ValueError(f"id {i!r} cannot be written (empty, or has a space or comma)")
    lines.append(f"{i} , {_format(spec, p)} \n")
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


def read_predictions(
  path: str, specs: tuple[tasks.TaskSpec, ...] = tasks.DEFAULT
) -> tuple[str, list[str], np.ndarray]:
  """Reads a file written by write_predictions for one of `specs` (its header names the
  task): (task, ids, float64 values)."""
  with open(path, encoding="utf-8") as f:
    header, *rows = f.read().splitlines()
  column = header.split("\t")[-1].strip()
  found = [t.name for t in specs if t.prediction_column == column]
  if header.split("\t")[0].strip() != "id" or not found:
    raise ValueError(f"{path}: not a prediction file (header {header!r})")
  ids, values = [], []
  for n, row in enumerate(rows, start=2):
    parts = row.split(" , ")
    if len(parts) != 2:
      raise ValueError(f"{path}:{n}: expected '<id> , <value>', got {row!r}")
    ids.append(parts[0].strip())
    values.append(float(parts[1]))
  return found[0], ids, np.asarray(values, dtype=np.float64)
