"""configs/seeds/*.py, one per seed project's best setting: each keeps the default budget,
changes only the keys that make it that seed, validates, and trains end to end on the tiny
BERT and a slice of the data with those settings in effect."""

from __future__ import annotations

import importlib
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_data, read_metrics, shrink
from flax import traverse_util

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.data import batching
from mtl_jax.evaluate import make_predict_fn
from mtl_jax.models import heads, hf_io
from mtl_jax.tasks import TASKS

SEEDS_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "seeds"
)
SEEDS = sorted(f[:-3] for f in os.listdir(SEEDS_DIR) if f.endswith(".py") and f != "__init__.py")

# What makes each seed that seed: the keys its config sets (dotted) and their values.
DISTINCT = {
  "multistream_rslora_pcgrad": {
    "model.pooling": "concat",
    "heads.kind": "multi_stream",
    "heads.sts": "cosine",
    "grad.method": "pcgrad",
    "adapter.kind": "rslora",
    "adapter.rank": 8,
    "adapter.alpha": 16.0,
  },
  "relu_cosine_sts": {"heads.sts": "relu_cosine"},
  "dot_product_heads": {"heads.quora": "dot", "heads.sts": "dot"},
  "fixed_loss_weights": {"grad.method": "fixed", "grad.kwargs.weights": (4.0, 1.0, 10.0)},
  "shared_layers": {"heads.kind": "shared"},
  "annealed_sampling": {
    "train.schedule": "annealed",
    "train.epoch_examples.quora": 20_000,
    "train.steps": 900,
  },  # One task a step: 3x the steps, same examples.
}


def _load(name: str):
  return importlib.import_module(f"configs.seeds.{name}").get_config()


def _flat(config) -> dict:
  return traverse_util.flatten_dict(config.to_dict(), sep=".")


def test_every_seed_config_is_described_here():
  assert SEEDS == sorted(DISTINCT)


@pytest.mark.parametrize("name", SEEDS)
def test_seed_config_changes_only_its_settings(name, tiny_bert_dir):
  config, base = _flat(_load(name)), _flat(default.get_config())
  assert {k: config[k] for k in DISTINCT[name]} == DISTINCT[name]
  changed = {k for k in set(config) | set(base) if config.get(k) != base.get(k)}
  assert changed <= set(DISTINCT[name])  # Nothing else: model, data, the rest of train.*.
  doc = importlib.import_module(f"configs.seeds.{name}").__doc__
  assert f"--config=configs/seeds/{name}.py" in doc and "Report:" in doc
  tiny = _load(name)
  tiny.model.path = tiny_bert_dir
  tiny.model.max_length = 32  # The tiny model has 64 positions.
  run_spec.build(tiny)


@needs_data
@pytest.mark.parametrize("name", SEEDS)
def test_seed_config_trains_on_a_small_slice(name, tiny_bert_dir, tmp_path):
  config = shrink(_load(name), tiny_bert_dir)
  config.train.length_buckets = (32,)  # One compiled step and one predict function.
  config.eval.write_predictions = False
  workdir = str(tmp_path / name)
  results = train.train_and_evaluate(config, workdir)
  assert set(results) == {"sst/accuracy", "quora/accuracy", "sts/pearson", "overall"}
  assert all(np.isfinite(v) for v in results.values()), results
  assert 0 <= results["sst/accuracy"] <= 1 and 0 <= results["quora/accuracy"] <= 1
  assert -1 <= results["sts/pearson"] <= 1 and 0 <= results["overall"] <= 1
  assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4]

  # The seed's settings took effect in the trained model.
  saved, model, params = train.load_trained(workdir)  # The run's RunSpec.
  assert model.head_spec == run_spec.head_spec(config) and model.pooling == config.model.pooling
  names = set(params["heads"])
  spec = model.head_spec
  assert ("pool_dense" in names) == (model.pooling == "concat")
  assert ("shared_dense" in names) == (spec.kind != "linear")
  assert ({f"{t}_stream" for t in TASKS} <= names) == (spec.kind == "multi_stream")
  assert ("quora" in names) == (spec.quora != "dot")
  lora = model.config.lora
  assert lora is not None and lora.kind == config.adapter.kind
  if name == "multistream_rslora_pcgrad":
    assert lora.scale == pytest.approx(16.0 / np.sqrt(8))
    assert names >= {"pool_dense", "shared_dense", "sst_stream", "quora_stream", "sts_stream"}
  if name == "shared_layers":
    assert "shared_dense" in names and "sst_stream" not in names
  if name == "dot_product_heads":
    assert names == {"sst"}  # Neither pair head has parameters.
  if name == "relu_cosine_sts":
    data = train.load_data(saved, hf_io.load_tokenizer(saved.config.model.path))
    sts_dev = next(d for d in data["dev"] if d.task == "sts")
    predict = make_predict_fn(model)
    for _, batch in batching.eval_batches(sts_dev, 16, (32,)):
      assert (np.asarray(predict(params, batch, np.int32(TASKS.index("sts")))["sts"]) >= 0).all()
  if name == "fixed_loss_weights":  # The method the run built combines 4, 1, 10.
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["grad"]["kwargs"]["weights"] == [4.0, 1.0, 10.0]
    tx = saved.grad_method
    update, _ = tx.update({"w": jnp.ones((3, 2))}, tx.init({"w": jnp.ones(2)}))
    np.testing.assert_allclose(np.asarray(update["w"]), [15.0, 15.0])
  if name == "annealed_sampling":
    assert spec == heads.HeadSpec() and names == {"sst", "quora"}
    logged = [r for r in read_metrics(workdir) if "loss" in r]  # Every step: one task, named.
    assert all(r["task"] in TASKS and f"task_loss/{r['task']}" in r for r in logged)
