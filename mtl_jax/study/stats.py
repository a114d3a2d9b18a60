"""The statistics of a study: training noise over seeds, evaluation noise over dev examples.

Two sources of noise hide a real difference between two configurations. Training noise:
another seed draws other batches, dropout and initial adapters; it is measured by running
every configuration at several seeds and comparing configurations seed by seed (a paired
Student-t interval of the differences). Evaluation noise: the dev sets are samples too
(SST 1,101 sentences: one standard error of an accuracy near 0.44 is 1.5 points); it is
measured per run by a bootstrap over the dev examples of its prediction files.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence

import numpy as np

from mtl_jax import prediction_files as predictions_lib
from mtl_jax import scores as metrics_lib
from mtl_jax import tasks as tasks_lib

CONFIDENCE = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


# --- Over seeds: mean, sample sd, paired differences


def _scipy_stats():
  """scipy.stats, imported where a t distribution is needed: the trainer imports this
  module for the dev bootstrap alone, and scipy.stats takes a second of CPU to import."""
  from scipy import stats

  return stats


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
  t = _scipy_stats().t.ppf(0.5 + confidence / 2, x.size - 1)
  half = t * x.std(ddof=1) / math.sqrt(x.size)
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
  specs: tuple[tasks_lib.TaskSpec, ...] = tasks_lib.DEFAULT,
) -> dict[str, np.ndarray]:
  """{metric: [resamples]} of the dev metrics of the tasks `specs` on resampled dev sets.

  Resample b draws, for each task in task-axis order, n_task indices with replacement from
  np.random.default_rng(seed).integers(0, n_task, (resamples, n_task)); overall is
  recomputed from the resampled metrics of the same b, so its interval carries the
  noise of every dev set."""
  metrics = metrics_lib.dev_metrics(specs)
  return _resampled_metrics(predictions, labels, _draw(labels, metrics, resamples, seed), metrics)


def bootstrap_intervals(
  predictions: dict[str, np.ndarray],
  labels: dict[str, np.ndarray],
  resamples: int = RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
  confidence: float = CONFIDENCE,
  specs: tuple[tasks_lib.TaskSpec, ...] = tasks_lib.DEFAULT,
) -> dict[str, list[float]]:
  """{metric: [low, high]}: percentile bootstrap intervals (see bootstrap_samples)."""
  tail = 100 * (1 - confidence) / 2
  return {
    m: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
    for m, v in bootstrap_samples(predictions, labels, resamples, seed, specs).items()
  }


def dev_intervals(workdir: str, dev: Sequence) -> dict | None:
  """Bootstrap intervals of a run's dev metrics from its WORKDIR/predictions files, for
  results.json; None when the run wrote no dev predictions (eval.write_predictions=False).

  `dev`: one object per task with .task, .ids and .labels (the trainer's encoded dev
  splits, or files.load_split's). The files hold what a grader reads: STS predictions
  clipped to [0, 5], so the STS interval is of the clipped scores (a negative cosine
  becomes 0; the point estimate may differ from results.json's by that)."""
  predictions, labels = {}, {}
  specs = tuple(getattr(d, "task_spec", None) or tasks_lib.get(d.task) for d in dev)
  for d, spec in zip(dev, specs):
    path = os.path.join(workdir, "predictions", predictions_lib.output_filename(spec, "dev"))
    if not os.path.isfile(path):
      return None
    try:  # Never fail the end of a finished run over its intervals.
      _, ids, values = predictions_lib.read_predictions(path, specs)
    except (OSError, ValueError):
      return None
    if list(ids) != list(d.ids):  # Not this dev set's predictions: no interval is better.
      return None
    predictions[d.task], labels[d.task] = values, np.asarray(d.labels)
  if not specs:
    return None
  return {
    "resamples": RESAMPLES,
    "seed": BOOTSTRAP_SEED,
    "confidence": CONFIDENCE,
    "intervals": bootstrap_intervals(predictions, labels, specs=specs),
  }


# --- Families, equivalence and power (over seeds)

ALPHA = 0.05
POWER = 0.8


def t_test(differences: Sequence[float]) -> dict:
  """{mean, sd, n, p}: the two-sided one-sample t test of mean(differences) = 0 (the paired
  t test of the two configurations). p is nan below two values; a zero sd gives p = 0 for
  a nonzero mean (every seed moved the same way by the same amount) and 1 for a zero mean."""
  x = _finite(differences)
  if x.size < 2:
    return {
      "mean": float(x.mean()) if x.size else math.nan,
      "sd": math.nan,
      "n": int(x.size),
      "p": math.nan,
    }
  mean, sd = float(x.mean()), float(x.std(ddof=1))
  if sd == 0:
    return {"mean": mean, "sd": 0.0, "n": int(x.size), "p": 0.0 if mean != 0 else 1.0}
  t = mean / (sd / math.sqrt(x.size))
  return {
    "mean": mean,
    "sd": sd,
    "n": int(x.size),
    "p": float(2 * _scipy_stats().t.sf(abs(t), x.size - 1)),
  }


def tost(differences: Sequence[float], margin: float) -> float:
  """p of the two one-sided t tests of equivalence within ±margin (Schuirmann): the larger
  of the p of H0: mean <= -margin and of H0: mean >= +margin. p < alpha is the same as the
  (1 - 2 alpha) t interval lying inside (-margin, +margin). nan below two values."""
  x = _finite(differences)
  if x.size < 2:
    return math.nan
  mean, se, dof = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size), x.size - 1
  if se == 0:
    return 0.0 if abs(mean) < margin else 1.0
  t = _scipy_stats().t
  p_low = t.sf((mean + margin) / se, dof)  # H0: mean <= -margin.
  p_high = t.cdf((mean - margin) / se, dof)  # H0: mean >= +margin.
  return float(max(p_low, p_high))


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the order given: the k-th smallest of m
  p-values times (m - k + 1), made non-decreasing in that order, capped at 1. Rejecting
  where adjusted p < alpha controls the family-wise error rate at alpha. nan entries are
  not in the family and stay nan."""
  p = np.asarray(p_values, np.float64)
  out = np.full(p.shape, math.nan)
  finite = np.flatnonzero(np.isfinite(p))
  order = finite[np.argsort(p[finite], kind="stable")]
  m, running = order.size, 0.0
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i]))
    out[i] = running
  return out.tolist()


VERDICTS = ("better", "worse", "equivalent", "inconclusive")


def four_way(mean: float, p: float, p_tost: float, margin: float, alpha: float = ALPHA) -> str:
  """better / worse (difference test p < alpha, by the sign of the mean), else equivalent
  within ±margin (TOST p < alpha), else inconclusive; "n too small" without a p."""
  if not math.isfinite(p):
    return "n too small"
  if p < alpha:
    return "better" if mean > 0 else "worse"
  if math.isfinite(p_tost) and p_tost < alpha:
    return f"equivalent within ±{margin:g}"
  return "inconclusive"


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
  """Power of the two-sided paired t test at level alpha to detect a true mean difference
  `effect` when the paired differences have sd `sd`, with n pairs: P(|T| > t_crit) for T
  noncentral t with n - 1 degrees of freedom and noncentrality effect·√n / sd."""
  dof = n - 1
  stats = _scipy_stats()
  crit = stats.t.ppf(1 - alpha / 2, dof)
  nc = abs(effect) * math.sqrt(n) / sd
  upper, lower = stats.nct.sf(crit, dof, nc), stats.nct.cdf(-crit, dof, nc)
  # scipy's noncentral t gives nan far in a tail (noncentrality in the tens): there it is 1 / 0.
  upper = 1.0 if math.isnan(upper) else upper
  lower = 0.0 if math.isnan(lower) else lower
  return float(min(1.0, upper + lower))


def mde(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
  """Minimum detectable effect: the true mean difference the two-sided paired t test at
  level alpha detects with power `target`, at n pairs whose differences have sd `sd`
  (exact, by the noncentral t; about (t(1 - alpha/2, n-1) + t(target, n-1)) · sd / √n).
  nan when it cannot be computed (n < 2, sd not positive)."""
  if n < 2 or not (math.isfinite(sd) and sd > 0):
    return math.nan
  from scipy.optimize import brentq

  hi = sd
  while power(hi, sd, n, alpha) < target:
    hi *= 2
  return float(brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, hi, xtol=sd * 1e-10))


def n_needed(
  effect: float, sd: float, alpha: float = ALPHA, target: float = POWER, limit: int = 100_000
) -> int | None:
  """The fewest pairs (seeds) at which the paired t test detects a true difference
  `effect` with power `target`, given an sd of the paired differences; None past `limit`
  or without an effect or sd."""
  if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or sd <= 0:
    return None
  n = 2
  while power(effect, sd, n, alpha) < target:
    n = n + 1 if n < 64 else int(n * 1.05) + 1
    if n > limit:
      return None
  if n > 64:  # The coarse steps overshot: back off to the first n that makes it.
    while n > 2 and power(effect, sd, n - 1, alpha) >= target:
      n -= 1
  return n


# --- Over dev examples, paired: the same resampled examples for both configurations


def _draw(
  labels: dict[str, np.ndarray], metrics: Sequence[str], resamples: int, seed: int
) -> dict[str, np.ndarray]:
  """{task: [resamples, n_task] indices}: per task of `metrics` (flat dev metric names),
  in their order, default_rng(seed).integers(0, n_task, (resamples, n_task))."""
  rng = np.random.default_rng(seed)
  idx = {}
  for metric in metrics:
    task = metric.partition("/")[0]
    n = np.asarray(labels[task]).size
    idx[task] = rng.integers(0, max(n, 1), (resamples, n))  # n = 0: refused below.
  return idx


def _resampled_metrics(
  predictions: dict[str, np.ndarray],
  labels: dict[str, np.ndarray],
  idx: dict[str, np.ndarray],
  metrics: Sequence[str],
) -> dict[str, np.ndarray]:
  """{metric: [B]} of each of `metrics` ("task/accuracy" | "task/pearson") on the
  resampled examples idx[task] [B, n_task], and overall (scores.overall) from them."""
  out = {}
  for metric in metrics:
    task, _, kind = metric.partition("/")
    pred = np.asarray(predictions[task], np.float64)
    gold = np.asarray(labels[task], np.float64)
    if pred.shape != gold.shape or pred.size == 0:
      raise ValueError(f"{task}: {pred.size} predictions for {gold.size} labels")
    if kind == "accuracy":
      out[metric] = (pred == gold)[idx[task]].mean(axis=1)
    else:
      out[metric] = _pearson_rows(pred[idx[task]], gold[idx[task]])
  out["overall"] = metrics_lib.overall(out, metrics)
  return out


def paired_bootstrap(
  config: Sequence[dict[str, np.ndarray]],
  baseline: Sequence[dict[str, np.ndarray]],
  labels: dict[str, np.ndarray],
  metrics: Sequence[str],
  resamples: int = RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
  confidence: float = CONFIDENCE,
) -> dict[str, dict]:
  """{metric: {mean, low, high, p, samples}} of (configuration − baseline) over resampled
  dev sets, averaged over the paired seeds.

  config[i] and baseline[i] are the dev predictions ({task: array in the dev files' order})
  of the two configurations at the i-th paired seed; `metrics` the tasks' flat dev metric
  names in task-axis order (a ledger's: ledger.task_metrics). Resample b draws, per task in
  that order, n_task indices with replacement from default_rng(seed).integers(0, n_task,
  (resamples, n_task)); every run of both configurations is scored on those same examples
  (each task metric, and overall from them: scores.overall), and the resample's difference
  is the mean over seeds of config − baseline. `mean` is that difference on the full dev
  sets; [low, high] the percentile interval; p the two-sided bootstrap p of no
  difference, 2·min(share of resamples ≤ 0, share ≥ 0), capped at 1."""
  if not config or len(config) != len(baseline):
    raise ValueError(f"{len(config)} runs of the configuration for {len(baseline)} of the baseline")
  idx = _draw(labels, metrics, resamples, seed)
  full = {t: np.arange(len(labels[t]))[None] for t in idx}
  diff = collections.defaultdict(float)
  point = collections.defaultdict(float)
  score = lambda preds, at: _resampled_metrics(preds, labels, at, metrics)
  for c, b in zip(config, baseline):
    mc, mb, pc, pb = score(c, idx), score(b, idx), score(c, full), score(b, full)
    for m in mc:
      diff[m] = diff[m] + (mc[m] - mb[m]) / len(config)
      point[m] += float(pc[m][0] - pb[m][0]) / len(config)
  tail = 100 * (1 - confidence) / 2
  out = {}
  for m, samples in diff.items():
    p = min(1.0, 2 * min(float(np.mean(samples <= 0)), float(np.mean(samples >= 0))))
    out[m] = {
      "mean": point[m],
      "low": float(np.percentile(samples, tail)),
      "high": float(np.percentile(samples, 100 - tail)),
      "p": p,
      "samples": samples,
    }
  return out
