"""Metrics against scipy and hand-computed values."""

import numpy as np
import pytest
import scipy.stats

from mtl_jax import scores as metrics


def test_accuracy_by_hand():
  assert metrics.accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
  assert metrics.accuracy(np.array([1.0, 0.0]), np.array([1.0, 1.0], np.float32)) == 0.5


def test_accuracy_random():
  rng = np.random.default_rng(0)
  pred, labels = rng.integers(0, 5, 1000), rng.integers(0, 5, 1000)
  assert metrics.accuracy(pred, labels) == pytest.approx(np.count_nonzero(pred == labels) / 1000)


@pytest.mark.parametrize("seed", range(5))
def test_pearson_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  labels = rng.uniform(0, 5, 500).astype(np.float32)
  pred = (labels * rng.uniform(-1, 1) + rng.normal(0, 2, 500)).astype(np.float32)
  assert metrics.pearson(pred, labels) == pytest.approx(
    scipy.stats.pearsonr(pred, labels)[0], abs=1e-6
  )


def test_pearson_by_hand():
  assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
  assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert metrics.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_pearson_constant_is_zero_not_nan():
  assert metrics.pearson(np.full(10, 0.1), np.arange(10)) == 0.0
  assert metrics.pearson(np.arange(10), np.full(10, 3.0)) == 0.0
  assert np.isnan(metrics.pearson([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]))


def test_shape_mismatch_and_empty():
  with pytest.raises(ValueError, match="3 predictions for 2 labels"):
    metrics.accuracy([1, 2, 3], [1, 2])
  with pytest.raises(ValueError):
    metrics.pearson([], [])


def test_overall_score():
  assert metrics.overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
  assert metrics.overall_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
  assert metrics.overall_score(0.0, 0.0, -1.0) == pytest.approx(0.0)


def test_evaluate_task():
  assert metrics.evaluate_task("sst", [1, 2], [1, 1]) == {"sst": {"accuracy": 0.5}}
  assert metrics.evaluate_task("quora", [1.0, 0.0], [1.0, 0.0]) == {"quora": {"accuracy": 1.0}}
  out = metrics.evaluate_task("sts", [1, 2, 3], [2, 4, 6])
  assert list(out) == ["sts"] and out["sts"]["pearson"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown task"):
    metrics.evaluate_task("para", [1], [1])
