"""CoSENT for bi-encoded STS (config.heads.sts_loss="cosent", mtl_jax.step.cosent): a
hand-computed value, a NumPy transcription of Su's formula on random batches with padding,
invariance to the order of the pairs, finite gradients on an empty lane, the heads' outputs,
the config boundary, packing that keeps the batch whole, and a tiny packed run."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import default_config_with, needs_data, read_metrics, tiny_config

from mtl_jax import step, train
from mtl_jax.config import run_spec
from mtl_jax.data import packing
from mtl_jax.models import heads
from mtl_jax.tasks import TASKS

STS = TASKS.index("sts")


def _reference(scores, labels, weights, scale=20.0) -> float:
  """Su's CoSENT, transcribed loop by loop in float64: log(1 + sum over the real pairs
  (i, j) with y_i > y_j of exp(scale * (s_j - s_i)))."""
  total = 1.0
  n = len(scores)
  for i in range(n):
    for j in range(n):
      if weights[i] > 0 and weights[j] > 0 and labels[i] > labels[j]:
        total += math.exp(scale * (float(scores[j]) - float(scores[i])))
  return math.log(total)


def test_cosent_by_hand():
  # Pairs 1 and 3 tie (1.0 = 1.0: no term); pair 4 is padding, and would add e^(20 * 1.9).
  scores = jnp.asarray([0.9, 0.6, 0.5, 0.7, -1.0])
  labels = jnp.asarray([4.0, 1.0, 2.5, 1.0, 5.0])
  weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
  # y_0 > y_1, y_2, y_3 and y_2 > y_1, y_3: 20 (s_j - s_i) = -6, -8, -4, +2, +4.
  want = math.log(1 + math.exp(-6) + math.exp(-8) + math.exp(-4) + math.exp(2) + math.exp(4))
  # ln(1 + 0.0025 + 0.0003 + 0.0183 + 7.389 + 54.598)
  assert want == pytest.approx(4.14327, abs=1e-5)
  assert float(step.cosent(scores, labels, weights)) == pytest.approx(want, rel=1e-6)
  # The scale: lambda = 10 halves every exponent.
  half = math.log(1 + math.exp(-3) + math.exp(-4) + math.exp(-2) + math.exp(1) + math.exp(2))
  assert float(step.cosent(scores, labels, weights, 10.0)) == pytest.approx(half, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_cosent_equals_the_numpy_transcription_with_padding(seed):
  rng = np.random.default_rng(seed)
  n, real = 16, int(rng.integers(2, 16))
  scores = rng.uniform(-1, 1, n).astype(np.float32)
  labels = np.round(rng.uniform(0, 5, n), 1).astype(np.float32)  # Some ties.
  weights = (np.arange(n) < real).astype(np.float32)
  labels[real:] = 5.0  # Padding rows with labels that would rank high if counted.
  got = float(step.cosent(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(weights)))
  assert got == pytest.approx(_reference(scores, labels, weights), rel=1e-5)
  # Through task_loss: the head output sts_rank selects CoSENT for the STS task.
  outputs = {"sst": jnp.zeros((n, 5)), "quora": jnp.zeros(n), "sts": 5 * scores}
  outputs["sts_rank"] = jnp.asarray(scores)
  loss = step.task_loss(outputs, jnp.asarray(labels), jnp.asarray(weights), jnp.asarray(STS))
  assert float(loss) == pytest.approx(got, rel=1e-6)


def test_cosent_does_not_depend_on_the_order_of_the_pairs():
  rng = np.random.default_rng(7)
  scores, labels = rng.uniform(-1, 1, 12), rng.uniform(0, 5, 12)
  weights = (np.arange(12) < 9).astype(np.float32)
  arrays = lambda p: (jnp.asarray(x[p], jnp.float32) for x in (scores, labels, weights))
  loss = lambda p: float(step.cosent(*arrays(p)))
  base = loss(np.arange(12))
  for k in range(3):
    assert loss(rng.permutation(12)) == pytest.approx(base, rel=1e-6), k
  # It is a ranking loss: a higher score for the pair with the higher label lowers it.
  top = int(np.argmax(np.where(weights > 0, labels, -1)))
  better = scores.copy()
  better[top] += 0.5
  raised = float(step.cosent(*(jnp.asarray(x, jnp.float32) for x in (better, labels, weights))))
  assert raised < base


def test_an_empty_lane_has_zero_loss_and_finite_gradients():
  """A lane with no real pair (a slot of a packed batch) pools to zero vectors: the loss
  is log(1) = 0 and the gradient through the cosine head is finite (and zero)."""
  module = heads.TaskHeads(0.0, heads.HeadSpec(sts_loss="cosent"))
  pooled = jnp.zeros((6, 4))
  params = module.init(jax.random.PRNGKey(0), pooled)["params"]
  labels, weights = jnp.asarray([1.0, 2.0, 3.0, 0, 0, 0]), jnp.zeros(6)

  def loss(pooled):
    return step.task_loss(module.apply({"params": params}, pooled), labels, weights, STS)

  value, grad = jax.value_and_grad(loss)(pooled)
  assert float(value) == 0.0 and np.isfinite(np.asarray(grad)).all()
  assert not np.asarray(grad).any()
  half = pooled.at[0].set(1.0).at[3].set(2.0).at[1].set(-1.0).at[4].set(1.0)
  weights = jnp.asarray([1.0, 1.0, 0, 0, 0, 0])  # Two real pairs, one padding pair.
  value, grad = jax.value_and_grad(
    lambda p: step.task_loss(module.apply({"params": params}, p), labels, weights, STS)
  )(half)
  assert np.isfinite(float(value)) and float(value) > 0 and np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("sts", heads.STS_HEADS)
def test_the_heads_rank_their_score_and_predict_on_the_0_5_scale(sts):
  pooled = jax.random.normal(jax.random.PRNGKey(8), (6, 8))
  module = heads.TaskHeads(0.1, heads.HeadSpec(sts=sts, sts_loss="cosent"))
  params = module.init(jax.random.PRNGKey(0), pooled)["params"]
  out = module.apply({"params": params}, pooled)
  assert out.keys() == {"sst", "quora", "sts", "sts_rank"}
  # The prediction is the one the head gives with the default loss (same params).
  plain = heads.TaskHeads(0.1, heads.HeadSpec(sts=sts)).apply({"params": params}, pooled)
  np.testing.assert_array_equal(np.asarray(out["sts"]), np.asarray(plain["sts"]))
  p = np.asarray(pooled)
  u, v = p[:3], p[3:]
  cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  rank = np.asarray(out["sts_rank"])
  if sts == "cosine":  # Su's s_i = cos(u_i, v_i); the prediction stays 5 cos.
    np.testing.assert_allclose(rank, cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["sts"]), 5 * cos, rtol=1e-5, atol=1e-5)
  elif sts == "relu_cosine":
    np.testing.assert_allclose(rank, np.maximum(cos, 0), rtol=1e-5, atol=1e-6)
  elif sts == "dot":
    np.testing.assert_allclose(rank, (u * v).sum(-1), rtol=1e-5, atol=1e-5)
  else:
    np.testing.assert_allclose(np.asarray(out["sts"]), rank, rtol=1e-6)


def test_a_bfloat16_score_is_ranked_in_float32():
  scores = jnp.asarray([0.30, 0.31, 0.29], jnp.bfloat16)
  labels, weights = jnp.asarray([3.0, 2.0, 1.0]), jnp.ones(3)
  got = step.cosent(scores, labels, weights)
  assert got.dtype == jnp.float32
  s = np.asarray(scores.astype(jnp.float32), np.float64)  # The bf16 values, exactly.
  assert float(got) == pytest.approx(_reference(s, labels, weights), rel=1e-6)


# -------------------------------------------------------------------------------------
# Config boundary
# -------------------------------------------------------------------------------------


def test_cosent_is_refused_on_cross_encoded_sts_naming_the_key():
  for pairs in ("cross", "sts=cross"):
    config = default_config_with(
      **{"heads.pairs": pairs, "heads.sts": "features", "heads.sts_loss": "cosent"}
    )
    with pytest.raises(run_spec.ConfigError, match=re.escape("config.heads.sts_loss: 'cosent'")):
      run_spec.build(config)
  # Quora cross-encoded, STS bi-encoded: CoSENT applies.
  config = default_config_with(**{"heads.pairs": "quora=cross", "heads.sts_loss": "cosent"})
  assert run_spec.build(config).model.heads.batch_ranked_tasks == ("sts",)
  assert run_spec.build(default_config_with()).model.heads.batch_ranked_tasks == ()


# -------------------------------------------------------------------------------------
# Packing: the ranked pairs are the whole batch's
# -------------------------------------------------------------------------------------


def test_slot_candidates_keep_a_ranked_task_in_one_lane():
  tokens = [1600, 1011, 941]
  assert packing.slot_candidates(tokens, (4, 4, 1)) == [(1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 3, 1)]
  costs = {(1, 1, 1): 90, (2, 1, 1): 80, (3, 2, 1): 70, (4, 3, 1): 75, (3, 2, 2): 10}
  chosen = packing.choose_slots(packing.PackPlan(), tokens, lambda p: costs[p.slots], (4, 4, 1))
  assert chosen.slots == (3, 2, 1)


@needs_data
def test_a_tiny_packed_cosent_run_trains_with_sts_in_one_lane(tiny_bert_dir, tmp_path):
  """Packed (the default), with the slots the trainer chooses; the unpacked loss is the
  packed one (tests/data/test_packing.py)."""
  config = tiny_config(tiny_bert_dir, steps=2, checkpoint_every=2)
  config.heads.sts_loss = "cosent"
  spec = run_spec.build(config)
  data = train.load_data(spec, spec.tokenizer())["train"]
  assert config.train.packing and train.train_batches(spec, data).plan.slots[STS] == 1
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert all(np.isfinite(v) for v in results.values()) and -1 <= results["sts/pearson"] <= 1
  rows = [r for r in read_metrics(str(tmp_path / "run")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["task_loss/sts"]) and r["task_loss/sts"] > 0 for r in rows)
