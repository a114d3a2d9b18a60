"""Every pooling / head / STS-loss variant of mtl_jax.models.heads (config.heads,
config.model.pooling): shapes, padding independence, symmetry, closed forms, the default
being exactly the original baseline, config validation and one tiny end-to-end run."""

from __future__ import annotations

import itertools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from mtl_jax import step
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec, upgrade
from mtl_jax.data.files import default_data_dir
from mtl_jax.models import heads, hf_io, multitask
from mtl_jax.models.dropout import Dropout
from mtl_jax.tasks import TASKS

H = 8
S = 6  # Sequences per batch: 3 pairs for the pair tasks.


class _Pooled(nn.Module):
  """Pooling + heads, as MultitaskModel wires them, on given hidden states."""

  spec: heads.HeadSpec
  pooling: str

  def setup(self):
    self.heads = heads.TaskHeads(0.1, self.spec, self.pooling, H)

  def __call__(self, hidden, mask, deterministic=True):
    return self.heads(self.heads.pool(hidden, mask), deterministic)

  def pool(self, hidden, mask):
    return self.heads.pool(hidden, mask)


def _hidden_and_mask(lengths, length, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(len(lengths), length, H)).astype(np.float32)
  mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(hidden), jnp.asarray(mask)


HIDDEN, MASK = _hidden_and_mask([5, 3, 1, 4, 2, 5], 5)
OPTIONS = (heads.ALL_POOLINGS, heads.KINDS, heads.QUORA_HEADS, heads.STS_HEADS, heads.STS_LOSSES)
COMBOS = list(itertools.product(*OPTIONS))


def _pairs(combo) -> set:
  return {(i, combo[i], j, combo[j]) for i, j in itertools.combinations(range(len(combo)), 2)}


def _pairwise(combos: list) -> list:
  """A subset of `combos` in which every pair of values of two options appears together
  (greedy, deterministic): each check below depends on one option or on two together."""
  uncovered = set().union(*map(_pairs, combos))
  chosen = []
  while uncovered:
    best = max(combos, key=lambda c: len(_pairs(c) & uncovered))
    chosen.append(best)
    uncovered -= _pairs(best)
  return chosen


@pytest.mark.parametrize("kind", heads.KINDS)
def test_variants_compute_finite_values_with_dropout(kind):
  for pooling, quora, sts, sts_loss in zip(
    heads.ALL_POOLINGS, heads.QUORA_HEADS, heads.STS_HEADS, heads.STS_LOSSES * 2
  ):
    module = _Pooled(heads.HeadSpec(kind, quora, sts, sts_loss), pooling)
    params = module.init(jax.random.PRNGKey(1), HIDDEN, MASK)["params"]
    out = module.apply(
      {"params": params}, HIDDEN, MASK, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)}
    )
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_every_combination_shapes_and_param_names():
  """Shapes by abstract evaluation; values: see the tests below. Of the 324 combinations,
  a pairwise-covering subset (every two options' values together at least once; tracing
  all 324 took 25 s for what each pair of options decides)."""
  assert len(COMBOS) == 3 * 3 * 3 * 4 * 3
  covering = _pairwise(COMBOS)
  assert set().union(*map(_pairs, covering)) == set().union(*map(_pairs, COMBOS))
  assert len(covering) < 25
  for pooling, kind, quora, sts, sts_loss in covering:
    spec = heads.HeadSpec(kind, quora, sts, sts_loss)
    module = _Pooled(spec, pooling)
    params = jax.eval_shape(lambda r: module.init(r, HIDDEN, MASK)["params"], jax.random.PRNGKey(1))
    out = jax.eval_shape(
      lambda p: module.apply(
        {"params": p}, HIDDEN, MASK, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)}
      ),
      params,
    )
    label = (pooling, kind, quora, sts, sts_loss)
    assert out["sst"].shape == (S, heads.NUM_SST_CLASSES), label
    assert out["quora"].shape == (S // 2,) and out["sts"].shape == (S // 2,), label
    extra = {"cosine": {"sts_unit"}, "cosent": {"sts_rank"}}.get(sts_loss, set())
    assert set(out) == {"sst", "quora", "sts"} | extra, label
    pooled = jax.eval_shape(
      lambda p: module.apply({"params": p}, HIDDEN, MASK, method=_Pooled.pool), params
    )
    assert pooled.shape == (S, 2 * H if pooling == "concat" else H), label
    # Task-specific layers are named after their task, shared ones shared_* / pool_*.
    names = set(params["heads"])
    assert all(n.split("_")[0] in TASKS or n in ("shared_dense", "pool_dense") for n in names), (
      label,
      names,
    )
    assert ("pool_dense" in names) == (pooling == "concat"), label
    assert ("shared_dense" in names) == (kind != "linear"), label
    assert {f"{t}_stream" for t in TASKS} <= names or kind != "multi_stream", label
    assert ("quora" in names) == (quora != "dot") and ("sts" in names) == (sts == "features")


@pytest.mark.parametrize("pooling", heads.ALL_POOLINGS)
def test_pooling_is_independent_of_padding(pooling):
  lengths = [2, 4, 1, 3]
  hidden, mask = _hidden_and_mask(lengths, 4, seed=3)
  wrapper = _Pooled(heads.HeadSpec(), pooling)
  params = wrapper.init(jax.random.PRNGKey(0), hidden, mask)["params"]
  pool = lambda h, m: np.asarray(wrapper.apply({"params": params}, h, m, method=_Pooled.pool))
  short = pool(hidden, mask)
  rng = np.random.default_rng(4)
  for extra in (1, 6):
    junk = 100.0 * rng.normal(size=(4, extra, H)).astype(np.float32)
    long_h = jnp.concatenate([hidden, jnp.asarray(junk)], axis=1)
    long_m = jnp.concatenate([mask, jnp.zeros((4, extra), jnp.int32)], axis=1)
    np.testing.assert_allclose(pool(long_h, long_m), short, rtol=1e-5, atol=1e-5)
  scrambled = jnp.where(mask[..., None] == 0, 1e3, hidden)
  np.testing.assert_allclose(pool(scrambled, mask), short, rtol=1e-5, atol=1e-5)
  if pooling == "concat":  # [tanh(W mean); CLS]
    mean = np.asarray(heads.pool(hidden, mask, "mean"))
    w = params["heads"]["pool_dense"]
    np.testing.assert_allclose(
      short[:, :H], np.tanh(mean @ np.asarray(w["kernel"]) + w["bias"]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(short[:, H:], np.asarray(hidden[:, 0]))


def test_concat_pooling_without_its_layer_raises():
  with pytest.raises(ValueError, match="concat"):
    heads.pool(HIDDEN, MASK, "concat")


SYMMETRIC = [("quora", q) for q in ("dot", "cosine")] + [
  ("sts", s) for s in ("cosine", "relu_cosine", "dot")
]


@pytest.mark.parametrize("kind", heads.KINDS)
@pytest.mark.parametrize("task, head", SYMMETRIC)
def test_cosine_and_dot_heads_are_symmetric(kind, task, head):
  spec = heads.HeadSpec(kind=kind, **{task: head})
  module = heads.TaskHeads(0.1, spec, "mean", H)
  pooled = jax.random.normal(jax.random.PRNGKey(5), (S, H))
  params = module.init(jax.random.PRNGKey(6), pooled)["params"]
  out = np.asarray(module.apply({"params": params}, pooled)[task])
  swapped = jnp.concatenate([pooled[S // 2 :], pooled[: S // 2]])
  np.testing.assert_allclose(
    np.asarray(module.apply({"params": params}, swapped)[task]), out, rtol=1e-5, atol=1e-5
  )
  # And the score is not constant: it depends on the pair.
  assert np.ptp(out) > 1e-4


def _linear_outputs(spec, pooled):
  module = heads.TaskHeads(0.1, spec)
  params = module.init(jax.random.PRNGKey(0), pooled)["params"]
  return module.apply({"params": params}, pooled), params


def test_pair_scores_closed_forms():
  pooled = jax.random.normal(jax.random.PRNGKey(7), (S, H))
  p = np.asarray(pooled)
  u, v = p[: S // 2], p[S // 2 :]
  cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  assert (cos < 0).any() and (cos > 0).any()  # Both signs, so ReLU matters.
  out, _ = _linear_outputs(heads.HeadSpec(sts="relu_cosine"), pooled)
  relu = np.asarray(out["sts"])
  assert (relu >= 0).all()
  np.testing.assert_allclose(relu, 5 * np.maximum(cos, 0), rtol=1e-5, atol=1e-6)
  out, _ = _linear_outputs(heads.HeadSpec(sts="dot", quora="dot"), pooled)
  np.testing.assert_allclose(np.asarray(out["sts"]), (u * v).sum(-1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["quora"]), (u * v).sum(-1), rtol=1e-5, atol=1e-5)
  out, params = _linear_outputs(heads.HeadSpec(quora="cosine", sts="features"), pooled)
  q = params["quora"]
  np.testing.assert_allclose(
    np.asarray(out["quora"]),
    cos * float(q["kernel"][0, 0]) + float(q["bias"][0]),
    rtol=1e-5,
    atol=1e-5,
  )
  feats = np.concatenate([u, v, np.abs(u - v), u * v], -1)
  np.testing.assert_allclose(
    np.asarray(out["sts"]),
    (feats @ np.asarray(params["sts"]["kernel"]) + np.asarray(params["sts"]["bias"]))[:, 0],
    rtol=1e-5,
    atol=1e-5,
  )


def test_cosine_sts_loss_is_the_closed_form():
  pooled = jax.random.normal(jax.random.PRNGKey(8), (S, H))
  p = np.asarray(pooled)
  u, v = p[: S // 2], p[S // 2 :]
  cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  labels = jnp.asarray([4.2, 0.5, 2.0, 0.0, 0.0, 0.0])
  weights = jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # Pair 1 is padding.
  sts_id = TASKS.index("sts")
  out, _ = _linear_outputs(heads.HeadSpec(sts_loss="cosine"), pooled)
  np.testing.assert_allclose(np.asarray(out["sts_unit"]), cos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["sts"]), 5 * cos, rtol=1e-5, atol=1e-5)
  got = float(step.task_loss(out, labels, weights, jnp.asarray(sts_id)))
  want = ((cos[0] - 4.2 / 5) ** 2 + (cos[2] - 2.0 / 5) ** 2) / 2
  assert got == pytest.approx(want, rel=1e-5)
  # The default: MSE of 5 cos against the label, on the 0..5 scale (25x the cosine form).
  out, _ = _linear_outputs(heads.HeadSpec(), pooled)
  assert "sts_unit" not in out
  got = float(step.task_loss(out, labels, weights, jnp.asarray(sts_id)))
  assert got == pytest.approx(25 * want, rel=1e-5)


# -------------------------------------------------------------------------------------
# The defaults are exactly the original heads.
# -------------------------------------------------------------------------------------


class _OriginalHeads(nn.Module):
  """The heads before variants existed (commit bd8e7a5), verbatim."""

  dropout: float = 0.1

  @nn.compact
  def __call__(self, pooled, deterministic=True):
    drop = Dropout(self.dropout)
    sst = nn.Dense(5, name="sst")(drop(pooled, deterministic=deterministic))
    u, v = heads.split_pairs(pooled)
    features = jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)
    quora = nn.Dense(1, name="quora")(drop(features, deterministic=deterministic))[:, 0]
    sts = 5.0 * heads.cosine(u, v)
    return {"sst": sst, "quora": quora, "sts": sts}


def test_default_heads_are_the_original_ones_bit_for_bit():
  pooled = jax.random.normal(jax.random.PRNGKey(9), (S, H))
  new, old = heads.TaskHeads(0.3), _OriginalHeads(0.3)
  p_new = new.init(jax.random.PRNGKey(1), pooled)["params"]
  p_old = old.init(jax.random.PRNGKey(1), pooled)["params"]
  flat_new, flat_old = traverse_util.flatten_dict(p_new), traverse_util.flatten_dict(p_old)
  assert (
    set(flat_new)
    == set(flat_old)
    == {("sst", "kernel"), ("sst", "bias"), ("quora", "kernel"), ("quora", "bias")}
  )
  for k in flat_old:  # Same names, shapes and initial values.
    np.testing.assert_array_equal(np.asarray(flat_new[k]), np.asarray(flat_old[k]))
  for det in (True, False):  # Same outputs, dropout masks included.
    a = new.apply(
      {"params": p_old}, pooled, deterministic=det, rngs={"dropout": jax.random.PRNGKey(3)}
    )
    b = old.apply(
      {"params": p_old}, pooled, deterministic=det, rngs={"dropout": jax.random.PRNGKey(3)}
    )
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_default_config_builds_the_original_param_tree(tiny_bert_dir):
  config = default.get_config()
  config.model.path = tiny_bert_dir
  spec = run_spec.model_spec(config)
  assert spec.pooling == "mean" and spec.heads == heads.HeadSpec()
  assert spec.heads == heads.HeadSpec("linear", "features", "cosine", "mse")
  model, params = multitask.build(spec, jax.random.PRNGKey(0))
  h = model.config.hidden_size
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params["heads"]).items()}
  assert shapes == {
    ("sst", "kernel"): (h, 5),
    ("sst", "bias"): (5,),
    ("quora", "kernel"): (4 * h, 1),
    ("quora", "bias"): (1,),
  }
  # A config saved before config.heads existed gives the same spec.
  old = upgrade.upgrade({k: v for k, v in config.to_dict().items() if k != "heads"})
  assert run_spec.model_spec(old) == spec


# -------------------------------------------------------------------------------------
# Config validation
# -------------------------------------------------------------------------------------


def _config(**overrides):
  config = default.get_config()
  config.model = ml_collections.ConfigDict(
    dict(config.model.to_dict(), path=str(config.model.path or "/some/bert"))
  )
  for key, value in overrides.items():
    section, leaf = key.split(".")
    assert leaf in config[section], key
    config[section][leaf] = value
  return config


BAD = [
  ("heads.kind", "mlp"),
  ("heads.quora", "bilinear"),
  ("heads.sts", "l1"),
  ("heads.sts_loss", "mae"),
  ("model.pooling", "max"),
]


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_bad_head_values_raise_config_error_naming_key(key, value):
  config = _config(**{key: value})
  with pytest.raises(run_spec.ConfigError, match=re.escape(f"config.{key}")):
    run_spec.build(config)
  if key.startswith("heads."):
    with pytest.raises(run_spec.ConfigError, match=re.escape(f"config.{key}")):
      run_spec.model_spec(config)


def test_good_head_values_make_the_spec():
  config = _config(
    **{
      "heads.kind": "multi_stream",
      "heads.quora": "dot",
      "heads.sts": "relu_cosine",
      "heads.sts_loss": "cosine",
      "model.pooling": "concat",
    }
  )
  run_spec.build(config)
  spec = run_spec.model_spec(config)
  assert spec.pooling == "concat"
  assert spec.heads == heads.HeadSpec("multi_stream", "dot", "relu_cosine", "cosine")


# -------------------------------------------------------------------------------------
# End to end
# -------------------------------------------------------------------------------------

DATA_DIR = default_data_dir()


@pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason=f"no data at {DATA_DIR}")
def test_tiny_run_with_non_default_heads(tiny_bert_dir, tmp_path):
  from conftest import read_metrics, tiny_config

  from mtl_jax import train

  config = tiny_config(tiny_bert_dir)
  config.model.pooling = "concat"
  config.heads.kind = "multi_stream"
  config.heads.quora = "dot"
  config.heads.sts = "relu_cosine"
  config.heads.sts_loss = "cosine"
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert set(results) >= {"sst/accuracy", "quora/accuracy", "sts/pearson", "overall"}
  assert all(np.isfinite(v) for v in results.values())
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    assert np.isfinite(r["loss"]) and all(np.isfinite(r[f"task_loss/{t}"]) for t in TASKS)
    assert r["task_loss/sts"] < 1.0  # Cosine form: (score - label/5)^2, score in [0, 1].
  bert_config, _ = hf_io.load_bert(tiny_bert_dir)
  model = multitask.MultitaskModel(bert_config, "concat", 0.1, run_spec.head_spec(config))
  dummy = jnp.zeros((2, 8), jnp.int32)
  params = jax.eval_shape(
    lambda r: model.init(r, dummy, dummy + 1, dummy)["params"], jax.random.PRNGKey(0)
  )
  names = set(params["heads"])
  assert names == {"pool_dense", "shared_dense", "sst_stream", "quora_stream", "sts_stream", "sst"}
  # Gradient surgery sees only the encoder as shared; the head layers are per-task leaves.
  shared = traverse_util.flatten_dict(multitask.is_shared(params))
  assert not any(v for k, v in shared.items() if k[0] == "heads")
