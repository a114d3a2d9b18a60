"""Evaluation metrics of the tasks, and the overall score (pure numpy).

overall = (1/T) sum_t normalised(m_t) over the T tasks' dev metrics m_t, where accuracy is
its own normalised value and a Pearson correlation r in [-1, 1] is mapped to (r + 1) / 2:
each term is in [0, 1]. With the three CS224N tasks it is the project's leaderboard score
(`overall_score`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtl_jax import tasks

TASK_METRIC = {t.name: t.metric for t in tasks.DEFAULT}  # Each CS224N task's dev metric.
# Their flat names ("sst/accuracy", "quora/accuracy", "sts/pearson"), in the order of
# overall_score's arguments (tasks.TASKS order).
DEV_METRICS = tuple(f"{t}/{m}" for t, m in TASK_METRIC.items())


def dev_metrics(specs: tuple[tasks.TaskSpec, ...]) -> tuple[str, ...]:
  """The flat names of the tasks' dev metrics ("sst/accuracy", ...), task-axis order."""
  return tuple(f"{t.name}/{t.metric}" for t in specs)


def normalised(metric: str, value: float) -> float:
  """A dev metric on [0, 1]: accuracy as it is, Pearson's r as (r + 1) / 2."""
  return (value + 1.0) / 2.0 if metric == "pearson" else value


def overall(results: dict, metrics: Sequence[str]) -> float | np.ndarray:
  """The mean of the tasks' normalised dev metrics: `metrics` their flat names
  (`dev_metrics`), `results` flat names -> values (floats, or arrays of resampled values)."""
  return sum(normalised(m.partition("/")[2], results[m]) for m in metrics) / len(metrics)


def _pair(pred, labels) -> tuple[np.ndarray, np.ndarray]:
  pred, labels = np.asarray(pred).ravel(), np.asarray(labels).ravel()
  if pred.shape != labels.shape:
    raise ValueError(f"{pred.size} predictions for {labels.size} labels")
  if pred.size == 0:
    raise ValueError("no predictions to evaluate")
  return pred, labels


def accuracy(pred, labels) -> float:
  """Fraction of exact matches (quora: 0/1 predictions vs 0.0/1.0 labels)."""
  pred, labels = _pair(pred, labels)
  return float(np.mean(pred == labels))


def pearson(pred, labels) -> float:
  """Pearson correlation, equal to scipy.stats.pearsonr(pred, labels)[0].

  Constant predictions (e.g. a collapsed regression head early in training)
  have no defined correlation; scipy returns NaN, which would poison the
  overall score and best-checkpoint comparisons, so we return 0.0 ("no
  signal"): a fair score for a model that predicts nothing. Constant labels
  (or fewer than 2) give 0.0 too, but there it is the dev set, not the model,
  that measures nothing: `data.files.check_dev_metric` refuses such a dev set.
  """
  pred, labels = _pair(pred, labels)
  # Test equality, not denom == 0: mean-centering a constant leaves rounding
  # noise whose "correlation" is arbitrary. NaN inputs still give NaN.
  if np.all(pred == pred[0]) or np.all(labels == labels[0]):
    return 0.0
  x = pred.astype(np.float64) - pred.mean(dtype=np.float64)
  y = labels.astype(np.float64) - labels.mean(dtype=np.float64)
  denom = np.sqrt(np.dot(x, x)) * np.sqrt(np.dot(y, y))
  return float(np.clip(np.dot(x, y) / denom, -1.0, 1.0))


def overall_score(sst_acc: float, quora_acc: float, sts_pearson: float) -> float:
  """The CS224N leaderboard score: STS correlation is mapped from [-1, 1] to [0, 1]."""
  return (sst_acc + quora_acc + (sts_pearson + 1.0) / 2.0) / 3.0


def evaluate_task(task: str | tasks.TaskSpec, predictions, labels) -> dict[str, dict[str, float]]:
  """{task: {metric_name: value}}, e.g. {"sts": {"pearson": 0.87}} (`task`: its spec, or a
  CS224N task's name)."""
  spec = task if isinstance(task, tasks.TaskSpec) else tasks.get(task)
  fn = accuracy if spec.metric == "accuracy" else pearson
  return {spec.name: {spec.metric: fn(predictions, labels)}}
