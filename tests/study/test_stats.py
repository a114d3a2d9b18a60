"""mtl_jax.study.stats against hand-computed values: sample sd, Student-t intervals of paired
differences and their verdicts, the bootstrap against a direct numpy recomputation, and
the intervals of a workdir's prediction files; the paired t test, TOST, Holm, power and
the minimum detectable effect, and the paired bootstrap over dev examples."""

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


# --- The paired t test, TOST, Holm, power (hand-computed values)


def _t2_sf(t: float) -> float:
  """P(T > t) for Student t with 2 dof, in closed form: (1 - t / sqrt(t² + 2)) / 2."""
  return (1 - t / math.sqrt(t * t + 2)) / 2


def test_paired_t_test_p_by_hand():
  got = stats.t_test([0.02, 0.03, 0.01])
  # mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3; p = 1 - t / sqrt(t² + 2).
  t = 2 * math.sqrt(3)
  assert got["p"] == pytest.approx(2 * _t2_sf(t)) and got["p"] == pytest.approx(0.0741799, abs=1e-7)
  assert (got["mean"], got["sd"], got["n"]) == pytest.approx((0.02, 0.01, 3))
  assert math.isnan(stats.t_test([0.1])["p"])
  assert stats.t_test([0.01, 0.01])["p"] == 0.0  # No spread, every seed moved: certain.


def test_tost_by_hand():
  diffs = [0.001, 0.002, 0.003]  # mean 0.002, se 0.001 / sqrt 3.
  se = 0.001 / math.sqrt(3)
  # H0 mean >= +0.005: t = (0.002 - 0.005) / se = -3 sqrt 3; p = P(T < -5.196) = 0.01755.
  # H0 mean <= -0.005: t = 0.007 / se = 12.12; p tiny. TOST p is the larger.
  p = stats.tost(diffs, 0.005)
  assert p == pytest.approx(_t2_sf(0.003 / se)) and p == pytest.approx(0.0175495, abs=1e-6)
  # The same as the 90% t interval (t(0.95, 2) = 2.919986) inside ±0.005: [0.000314, 0.003686].
  half = 2.919986 * se
  assert -0.005 < 0.002 - half and 0.002 + half < 0.005
  assert stats.tost(diffs, 0.003) > 0.05  # 0.003686 > 0.003: not equivalent within ±0.003.
  assert stats.four_way(0.002, stats.t_test(diffs)["p"], p, 0.005) == "equivalent within ±0.005"
  assert stats.four_way(0.002, 0.0742, 0.2, 0.003) == "inconclusive"
  assert stats.four_way(-0.01, 0.01, 0.9, 0.005) == "worse"
  assert stats.four_way(0.01, math.nan, math.nan, 0.005) == "n too small"


def test_holm_on_a_textbook_example():
  # m = 4; sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running
  # max: 0.02, 0.03, 0.06, 0.06; back in the given order:
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # Bonferroni's cap at 1, and nan outside the family (m = 2 here).
  got = stats.holm([0.6, math.nan, 0.02])  # 0.02 x 2 = 0.04; 0.6 x 1.
  assert got[0] == 0.6 and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
  assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # 0.6 x 2 capped at 1; the max carries on.


def test_power_and_mde_of_the_paired_t_test():
  # Standard tables (one-sample / paired t, two-sided alpha 0.05, power 0.8): effect 1 sd
  # needs n = 10 (power 0.8031), 0.5 sd needs n = 34 (power 0.8078).
  assert stats.power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=5e-4)
  assert stats.power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=5e-4)
  assert stats.n_needed(1.0, 1.0) == 10 and stats.n_needed(0.5, 1.0) == 34
  assert stats.n_needed(-0.5, 1.0) == 34 and stats.n_needed(0.0, 1.0) is None
  # Past the coarse steps: still the first n, near the normal approximation's
  # (2.80158 / 0.02)² = 19622.
  n = stats.n_needed(0.02, 1.0)
  assert 19622 <= n <= 19630 and stats.power(0.02, 1.0, n) >= 0.8 > stats.power(0.02, 1.0, n - 1)
  # The MDE is where the power is 0.8, and scales with the sd.
  for n in (3, 10, 1000):
    m = stats.mde(1.0, n)
    assert stats.power(m, 1.0, n) == pytest.approx(0.8, abs=1e-9)
    assert stats.mde(0.004, n) == pytest.approx(0.004 * m)
  # Large n: the normal approximation (z(0.975) + z(0.8)) / sqrt n = 2.80158 / sqrt n.
  assert stats.mde(1.0, 1000) == pytest.approx(2.80158 / math.sqrt(1000), rel=2e-3)
  # n = 3: at least the t approximation (t(0.975, 2) + t(0.8, 2)) / sqrt 3 = (4.3027 +
  # 1.0607) / 1.7321 = 3.0965 sd would suggest; the exact noncentral t needs a little more.
  approx = (T_975_2DOF + 1.0606601717798212) / math.sqrt(3)
  assert approx == pytest.approx(3.0965, abs=1e-4)
  assert approx < stats.mde(1.0, 3) < 1.2 * approx
  assert math.isnan(stats.mde(0.0, 3)) and math.isnan(stats.mde(1.0, 1))


# --- The paired bootstrap over dev examples


def _toy(sst_pred):
  return {
    "sst": np.array(sst_pred),
    "quora": np.array([0.0, 1.0, 1.0]),
    "sts": np.array([1.0, 2.0, 4.0]),
  }


DEV = ("sst/accuracy", "quora/accuracy", "sts/pearson")  # The CS224N tasks' dev metrics.
TOY_LABELS = {
  "sst": np.array([0, 1]),
  "quora": np.array([0.0, 1.0, 0.0]),
  "sts": np.array([0.0, 2.0, 5.0]),
}


def test_paired_bootstrap_on_a_toy_case():
  # The configuration gets SST example 1 right, the baseline does not; all else equal. On a
  # resample the SST difference is the share of draws of example 1: 0, 1/2 or 1 with
  # probabilities 1/4, 1/2, 1/4; the other tasks' differences are exactly 0.
  got = stats.paired_bootstrap(
    [_toy([0, 1])], [_toy([0, 0])], TOY_LABELS, DEV, resamples=4000, seed=3
  )
  idx = np.random.default_rng(3).integers(0, 2, (4000, 2))  # The documented draw: SST first.
  assert np.array_equal(got["sst/accuracy"]["samples"], (idx == 1).mean(axis=1))
  assert np.all(got["quora/accuracy"]["samples"] == 0) and np.all(
    got["sts/pearson"]["samples"] == 0
  )
  assert got["overall"]["samples"] == pytest.approx(got["sst/accuracy"]["samples"] / 3)
  sst = got["sst/accuracy"]
  assert sst["mean"] == 0.5 and (sst["low"], sst["high"]) == (0.0, 1.0)
  assert sst["p"] == pytest.approx(0.5, abs=0.04)  # 2 · P(difference <= 0) = 2 · 1/4.
  assert got["overall"]["mean"] == pytest.approx(0.5 / 3)


def test_paired_bootstrap_resamples_the_same_examples_and_averages_seeds():
  a, b = _toy([0, 1]), _toy([1, 0])
  same = stats.paired_bootstrap([a], [a], TOY_LABELS, DEV, resamples=50)
  assert all(np.all(v["samples"] == 0) and v["p"] == 1.0 for v in same.values())
  # Seed 0: config a vs baseline b; seed 1: b vs a. The mean over seeds is 0 on every resample.
  swapped = stats.paired_bootstrap([a, b], [b, a], TOY_LABELS, DEV, resamples=50)
  assert all(np.allclose(v["samples"], 0) for v in swapped.values())
  with pytest.raises(ValueError):
    stats.paired_bootstrap([a], [a, b], TOY_LABELS, DEV)
