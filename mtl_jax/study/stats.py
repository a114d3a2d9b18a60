"""The statistics of a study: training noise over seeds, evaluation noise over dev examples.

Two sources of noise hide a real difference between two configurations. Training noise:
another seed draws other batches, dropout and initial adapters; it is measured by running
every configuration at several seeds and comparing configurations seed by seed (a paired
Student-t interval of the differences). Evaluation noise: the dev sets are samples too
(SST 1,101 sentences: one standard error of an accuracy near 0.44 is 1.5 points); it is
measured per run by a bootstrap over the dev examples of its prediction files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

from mtl_jax import prediction_files as predictions_lib
from mtl_jax import scores as metrics_lib
from mtl_jax.tasks import TASKS

# results.json's metric names, in the report's order.
METRICS = (*metrics_lib.DEV_METRICS, "overall")
CONFIDENCE = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


# --- Over seeds: mean, sample sd, paired differences


def _finite(values: Sequence[float | None]) -> np.ndarray:
  x = np.array([v for v in values if v is not None], np.float64)
  return x[np.isfinite(x)]


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
  """(mean, sample sd (n - 1 in the denominator; None for n < 2), n) of the finite values."""
  x = _finite(values)
  if x.size == 0:
    return None, None, 0
  return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, int(x.size)


def t_interval(
  values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
  """(mean, low, high): the Student-t interval of the mean, n - 1 degrees of freedom.

  With n < 2 there is no spread to estimate: low = high = nan."""
  x = _finite(values)
  if x.size < 2:
    mean = float(x.mean()) if x.size else math.nan
    return mean, math.nan, math.nan
  half = scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def verdict(low: float, high: float, n: int) -> str:
  """Plain words for an interval of (configuration - baseline); every metric here is
  higher-is-better. An interval that contains 0 is not evidence of equality, only of a
  difference too small for this many seeds to see: hence "no difference detected"."""
  if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
    return "n too small"
  if low > 0:
    return "better"
  if high < 0:
    return "worse"
  return "no difference detected"


def paired_difference(
  values: dict[int, float], baseline: dict[int, float], confidence: float = CONFIDENCE
) -> dict:
  """{mean, low, high, n, seeds, verdict} of values[s] - baseline[s] over the seeds both have.

  Paired, because a seed fixes the data order and dropout of both runs: the seed-to-seed
  spread that both share cancels in the difference."""
  seeds = sorted(
    s for s in values.keys() & baseline.keys() if values[s] is not None and baseline[s] is not None
  )
  mean, low, high = t_interval([values[s] - baseline[s] for s in seeds], confidence)
  return {
    "mean": mean,
    "low": low,
    "high": high,
    "n": len(seeds),
    "seeds": seeds,
    "verdict": verdict(low, high, len(seeds)),
  }


# --- Over dev examples: bootstrap


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """metrics.pearson of each row of x [B, n] against the same row of y, vectorized
  (a constant row scores 0.0, as metrics.pearson does)."""
  xc = x - x.mean(axis=1, keepdims=True)
  yc = y - y.mean(axis=1, keepdims=True)
  denom = np.sqrt((xc * xc).sum(axis=1)) * np.sqrt((yc * yc).sum(axis=1))
  constant = (x == x[:, :1]).all(axis=1) | (y == y[:, :1]).all(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    r = np.clip((xc * yc).sum(axis=1) / denom, -1.0, 1.0)
  return np.where(constant, 0.0, r)


def bootstrap_samples(
  predictions: dict[str, np.ndarray],
  labels: dict[str, np.ndarray],
  resamples: int = RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
) -> dict[str, np.ndarray]:
  """{metric: [resamples]} of the dev metrics on resampled dev sets.

  Resample b draws, for each task in TASKS order, n_task indices with replacement from
  np.random.default_rng(seed).integers(0, n_task, (resamples, n_task)); overall is
  recomputed from the three resampled metrics of the same b, so its interval carries the
  noise of all three dev sets."""
  rng = np.random.default_rng(seed)
  out = {}
  for task in TASKS:
    pred = np.asarray(predictions[task], np.float64)
    gold = np.asarray(labels[task], np.float64)
    if pred.shape != gold.shape or pred.size == 0:
      raise ValueError(f"{task}: {pred.size} predictions for {gold.size} labels")
    idx = rng.integers(0, pred.size, (resamples, pred.size))
    if metrics_lib.TASK_METRIC[task] == "accuracy":
      out[f"{task}/accuracy"] = (pred == gold)[idx].mean(axis=1)
    else:
      out[f"{task}/pearson"] = _pearson_rows(pred[idx], gold[idx])
  out["overall"] = metrics_lib.overall_score(*(out[m] for m in metrics_lib.DEV_METRICS))
  return out


def bootstrap_intervals(
  predictions: dict[str, np.ndarray],
  labels: dict[str, np.ndarray],
  resamples: int = RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
  confidence: float = CONFIDENCE,
) -> dict[str, list[float]]:
  """{metric: [low, high]}: percentile bootstrap intervals (see bootstrap_samples)."""
  tail = 100 * (1 - confidence) / 2
  return {
    m: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
    for m, v in bootstrap_samples(predictions, labels, resamples, seed).items()
  }


def dev_intervals(workdir: str, dev: Sequence) -> dict | None:
  """Bootstrap intervals of a run's dev metrics from its WORKDIR/predictions files, for
  results.json; None when the run wrote no dev predictions (eval.write_predictions=False).

  `dev`: one object per task with .task, .ids and .labels (the trainer's encoded dev
  splits, or files.load_split's). The files hold what a grader reads: STS predictions
  clipped to [0, 5], so the STS interval is of the clipped scores (a negative cosine
  becomes 0; the point estimate may differ from results.json's by that)."""
  predictions, labels = {}, {}
  for d in dev:
    path = os.path.join(workdir, "predictions", predictions_lib.output_filename(d.task, "dev"))
    if not os.path.isfile(path):
      return None
    try:  # Never fail the end of a finished run over its intervals.
      _, ids, values = predictions_lib.read_predictions(path)
    except (OSError, ValueError):
      return None
    if list(ids) != list(d.ids):  # Not this dev set's predictions: no interval is better.
      return None
    predictions[d.task], labels[d.task] = values, np.asarray(d.labels)
  if set(predictions) != set(TASKS):
    return None
  return {
    "resamples": RESAMPLES,
    "seed": BOOTSTRAP_SEED,
    "confidence": CONFIDENCE,
    "intervals": bootstrap_intervals(predictions, labels),
  }
