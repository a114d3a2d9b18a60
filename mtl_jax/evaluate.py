"""Batched, jitted evaluation on the dev sets, and predictions in the CS224N format."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from mtl_jax import prediction_files as predictions_lib
from mtl_jax import scores as metrics_lib
from mtl_jax import tasks
from mtl_jax.data.batching import Encoded, eval_batches
from mtl_jax.models import multitask
from mtl_jax.models.multitask import MultitaskModel


@functools.lru_cache(maxsize=8)
def make_predict_fn(model: MultitaskModel):
  """params, batch, task id -> every head's outputs; compiled once per length bucket (the
  task id, used only by task-specific encoder layers, is traced). One function per model
  (models are equal when their settings are): a second run or tool in the same process
  reuses its traced and compiled programs instead of tracing them again."""

  @jax.jit
  def predict(params, batch, task):
    return multitask.apply(model, params, batch, task=task)

  return predict


def to_prediction(task: str | tasks.TaskSpec, output: np.ndarray) -> np.ndarray:
  """Head output -> the value the task is scored on, by its kind of label (mtl_jax.tasks):
  the argmax class, 0/1 from a logit, or the score itself. `task`: its spec, or a CS224N
  task's name."""
  label = (task if isinstance(task, tasks.TaskSpec) else tasks.get(task)).label
  if label == "class":
    return output.argmax(-1)
  if label == "binary":
    return (output > 0).astype(np.float32)
  return output


def predict_split(
  predict_fn, params, data: Encoded, seqs_per_batch: int, buckets: tuple[int, ...], plan=None
) -> np.ndarray:
  """Predictions for every example of a split, in the split's order; with `plan`
  (`mtl_jax.data.packing.PackPlan`) from packed batches."""
  preds = None
  spec = data.task_spec
  task = np.int32(spec.index)
  for idx, batch in eval_batches(data, seqs_per_batch, buckets, plan):
    out = np.asarray(predict_fn(params, batch, task)[spec.output])[: len(idx)]
    p = to_prediction(spec, out)
    if preds is None:
      preds = np.zeros((len(data),), p.dtype)
    preds[idx] = p
  return preds


def evaluate(
  predict_fn,
  params,
  dev: list[Encoded],
  seqs_per_batch: int,
  buckets: tuple[int, ...],
  plan=None,
  specs: tuple[tasks.TaskSpec, ...] | None = None,
) -> tuple[dict, dict]:
  """(flat metrics, {task: predictions}) on the dev splits; with 'overall' when they are
  every task's of `specs` (the run's; `scores.overall`: the mean of the normalised
  metrics)."""
  results, preds = {}, {}
  for data in dev:
    spec = data.task_spec
    preds[data.task] = predict_split(predict_fn, params, data, seqs_per_batch, buckets, plan)
    for name, value in metrics_lib.evaluate_task(spec, preds[data.task], data.labels)[
      data.task
    ].items():
      results[f"{data.task}/{name}"] = float(value)
  if specs is None:  # The run's tasks: those of the dev splits, or the CS224N ones.
    known = all(d.spec is not None for d in dev) and dev
    specs = tuple(d.spec for d in dev) if known else tasks.DEFAULT
  if all(name in results for name in metrics_lib.dev_metrics(specs)):
    results["overall"] = float(metrics_lib.overall(results, metrics_lib.dev_metrics(specs)))
  return results, preds


def write_split_predictions(workdir: str, data: Encoded, preds: np.ndarray) -> str:
  """WORKDIR/predictions/<the starter's file name for the task and split>."""
  path = os.path.join(
    workdir, "predictions", predictions_lib.output_filename(data.task_spec, data.split)
  )
  write_task_predictions(path, data, preds)
  return path


def write_task_predictions(path: str, data: Encoded, preds: np.ndarray) -> None:
  """One task's predictions in the CS224N format (STS clipped to the label range 0..5)."""
  spec = data.task_spec
  values = np.clip(preds, 0.0, spec.max_score) if spec.label == "score" else preds
  predictions_lib.write_predictions(path, spec, data.ids, values)
