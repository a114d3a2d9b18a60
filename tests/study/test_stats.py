"""mtl_jax.study.stats against hand-computed values: sample sd, Student-t intervals of paired
differences and their verdicts, the bootstrap against a direct numpy recomputation, and
the intervals of a workdir's prediction files."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from mtl_jax import prediction_files as predictions
from mtl_jax import scores as metrics
from mtl_jax.study import stats

T_975_2DOF = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303).


def test_mean_and_sample_sd():
  assert stats.mean_sd([0.70, 0.72, 0.74]) == pytest.approx((0.72, 0.02, 3))
  assert stats.mean_sd([0.5]) == (0.5, None, 1)  # No spread from one value.
  assert stats.mean_sd([None, float("nan")]) == (None, None, 0)


def test_paired_difference_t_interval_by_hand():
  base = {0: 0.70, 1: 0.71, 2: 0.72}
  config = {0: 0.72, 1: 0.74, 2: 0.73, 3: 0.99}  # Seed 3 has no baseline run: not paired.
  d = stats.paired_difference(config, base)
  # Differences 0.02, 0.03, 0.01: mean 0.02, sd 0.01, half-width t * 0.01 / sqrt(3).
  half = T_975_2DOF * 0.01 / math.sqrt(3)
  assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
  assert (d["mean"], d["low"], d["high"]) == pytest.approx((0.02, 0.02 - half, 0.02 + half))
  assert d["low"] == pytest.approx(-0.004841, abs=1e-6)
  assert d["verdict"] == "no difference detected"


@pytest.mark.parametrize(
  "diffs, verdict",
  [
    ((0.020, 0.021, 0.019), "better"),  # Half-width 0.0025: [0.0175, 0.0225].
    ((-0.020, -0.021, -0.019), "worse"),
    ((0.02, -0.01, 0.005), "no difference detected"),
  ],
)
def test_verdicts(diffs, verdict):
  d = stats.paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(3), 0.0))
  assert d["verdict"] == verdict
  if verdict == "better":
    assert (d["low"], d["high"]) == pytest.approx(
      (0.02 - T_975_2DOF * 0.001 / math.sqrt(3), 0.02 + T_975_2DOF * 0.001 / math.sqrt(3))
    )


def test_one_seed_is_n_too_small():
  d = stats.paired_difference({0: 0.8}, {0: 0.7})
  assert d["n"] == 1 and d["mean"] == pytest.approx(0.1) and d["verdict"] == "n too small"
  assert stats.paired_difference({0: 0.8}, {1: 0.7})["n"] == 0


def _synthetic(seed: int = 1):
  rng = np.random.default_rng(seed)
  labels = {
    "sst": rng.integers(0, 5, 40),
    "quora": rng.integers(0, 2, 30).astype(float),
    "sts": rng.uniform(0, 5, 25),
  }
  preds = {
    "sst": np.where(rng.random(40) < 0.5, labels["sst"], rng.integers(0, 5, 40)),
    "quora": np.where(rng.random(30) < 0.8, labels["quora"], 1 - labels["quora"]),
    "sts": labels["sts"] + rng.normal(0, 1.5, 25),
  }
  return preds, labels


def test_bootstrap_equals_a_direct_recomputation():
  preds, labels = _synthetic()
  got = stats.bootstrap_samples(preds, labels, resamples=200, seed=7)
  rng = np.random.default_rng(7)  # The documented draw order: tasks in TASKS order.
  idx = {t: rng.integers(0, len(labels[t]), (200, len(labels[t]))) for t in ("sst", "quora", "sts")}
  for b in range(200):
    sst = metrics.accuracy(preds["sst"][idx["sst"][b]], labels["sst"][idx["sst"][b]])
    quora = metrics.accuracy(preds["quora"][idx["quora"][b]], labels["quora"][idx["quora"][b]])
    sts = metrics.pearson(preds["sts"][idx["sts"][b]], labels["sts"][idx["sts"][b]])
    assert got["sst/accuracy"][b] == pytest.approx(sst)
    assert got["quora/accuracy"][b] == pytest.approx(quora)
    assert got["sts/pearson"][b] == pytest.approx(sts)
    assert got["overall"][b] == pytest.approx(metrics.overall_score(sst, quora, sts))
  intervals = stats.bootstrap_intervals(preds, labels, resamples=200, seed=7)
  assert intervals["overall"] == pytest.approx(np.percentile(got["overall"], [2.5, 97.5]))
  point = metrics.accuracy(preds["sst"], labels["sst"])
  assert intervals["sst/accuracy"][0] < point < intervals["sst/accuracy"][1]
  assert stats.bootstrap_intervals(preds, labels, 200, seed=7) == intervals  # Seeded.
  assert stats.bootstrap_intervals(preds, labels, 200, seed=8) != intervals


def test_bootstrap_constant_resample_scores_zero_pearson():
  preds = {"sst": np.zeros(3), "quora": np.zeros(3), "sts": np.array([1.0, 1.0, 1.0])}
  labels = {"sst": np.zeros(3), "quora": np.ones(3), "sts": np.array([0.0, 2.0, 4.0])}
  got = stats.bootstrap_samples(preds, labels, resamples=5)
  assert np.all(got["sts/pearson"] == 0.0) and np.all(got["sst/accuracy"] == 1.0)
  assert got["overall"] == pytest.approx(np.full(5, (1.0 + 0.0 + 0.5) / 3))


def test_dev_intervals_read_the_prediction_files(tmp_path):
  preds, labels = _synthetic()
  dev = []
  for task in ("sst", "quora", "sts"):
    ids = [f"{task}{i}" for i in range(len(labels[task]))]
    dev.append(types.SimpleNamespace(task=task, ids=ids, labels=labels[task]))
    values = np.clip(preds[task], 0, 5) if task == "sts" else preds[task]
    predictions.write_predictions(
      str(tmp_path / "predictions" / predictions.output_filename(task, "dev")), task, ids, values
    )
  got = stats.dev_intervals(str(tmp_path), dev)
  clipped = dict(preds, sts=np.clip(preds["sts"], 0, 5))
  assert got["resamples"] == 1000 and got["seed"] == 0 and got["confidence"] == 0.95
  assert got["intervals"] == stats.bootstrap_intervals(clipped, labels)  # Files round-trip.
  dev[0].ids = list(reversed(dev[0].ids))  # Predictions of another dev set: no interval.
  assert stats.dev_intervals(str(tmp_path), dev) is None
  assert stats.dev_intervals(str(tmp_path / "elsewhere"), dev) is None
