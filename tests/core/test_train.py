"""End-to-end trainer tests: the whole train_and_evaluate on a tiny random BERT and a slice
of the real data (fast), resume after interruption, and one short run on the bundled model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import (
  DATA_DIR,
  assert_same_run,
  interrupt_at,
  needs_data,
  read_metrics,
  tiny_config,
)

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.runtime import machine
from mtl_jax.runtime.checkpoint import Checkpointer


@needs_data
def test_train_and_evaluate_writes_metrics_predictions_and_checkpoint(tiny_bert_dir, tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(tiny_config(tiny_bert_dir), workdir)

  assert set(results) == {"sst/accuracy", "quora/accuracy", "sts/pearson", "overall"}
  expected = (
    results["sst/accuracy"] + results["quora/accuracy"] + (results["sts/pearson"] + 1) / 2
  ) / 3
  assert results["overall"] == pytest.approx(expected)
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  for r in train_rows:
    assert np.isfinite(r["loss"])
    assert r["loss"] == pytest.approx(
      sum(r[f"task_loss/{t}"] for t in ("sst", "quora", "sts")), rel=1e-5
    )
    cos = np.asarray(r["grad/cosine"])
    assert cos.shape == (3, 3) and np.allclose(np.diag(cos), 1.0, atol=1e-4)
  assert rows[-1]["step"] == 4 and "dev/overall" in rows[-1]
  # Predictions: one line per dev/test example plus the header, in the CS224N format.
  pred_dir = os.path.join(workdir, "predictions")
  with open(os.path.join(pred_dir, "sst-dev-output.csv")) as f:
    lines = f.read().splitlines()
  assert lines[0].startswith("id \t Predicted_Sentiment") and len(lines) == 41
  assert sorted(os.listdir(pred_dir)) == sorted(
    [
      "sst-dev-output.csv",
      "sst-test-output.csv",
      "para-dev-output.csv",
      "sts-dev-output.csv",
      "sts-test-output.csv",
    ]
  )
  assert Checkpointer(workdir, 1, 1).latest_step() == 4
  # Padding accounting: 4 packed steps, each of whole rows (an even count of rows of 16 or
  # 32 tokens per lane), at most what 3 tasks x 8 sequences x 32 tokens unpacked computes.
  with open(os.path.join(workdir, train.RESULTS_JSON)) as f:
    done = json.load(f)
  assert done["computed_tokens"] % (2 * 16) == 0
  assert done["computed_tokens"] <= 4 * 3 * 8 * 32
  assert 4 * 3 * 8 * 3 <= done["real_tokens"] < done["computed_tokens"]  # [CLS], a word, [SEP].
  assert done["machine"] == machine.cpu_summary()  # Where `seconds` was measured.


@needs_data
def test_interrupted_run_resumes_to_the_same_parameters(tiny_bert_dir, tmp_path, monkeypatch):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(tiny_bert_dir), straight)

  with monkeypatch.context() as m:
    interrupt_at(m, 3)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(tiny_config(tiny_bert_dir), resumed)
  # checkpoint_every=2, yet the interruption saved step 3 itself.
  assert Checkpointer(resumed, 1, 1).latest_step() == 3
  train.train_and_evaluate(tiny_config(tiny_bert_dir), resumed)  # The same command again.
  assert_same_run(tiny_config(tiny_bert_dir), straight, resumed, 4)


@needs_data
def test_nan_loss_stops_with_a_clear_error(tiny_bert_dir, tmp_path):
  config = tiny_config(tiny_bert_dir, steps=2, learning_rate=1e30, grad_clip=0.0)
  with pytest.raises(FloatingPointError, match="non-finite loss at step"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


@pytest.mark.e2e
@needs_data
def test_bundled_model_short_run(tmp_path):
  """A few LoRA + PCGrad steps on the real model: STS must stay at the pretrained level."""
  config = default.get_config()
  if not config.model.path:
    pytest.skip("bundled model package not installed")
  config.data_dir = DATA_DIR
  config.data_limit = 96
  config.grad.method = "pcgrad"
  config.train.steps = 3
  config.train.seqs_per_task = 16
  config.train.length_buckets = (32, 64, 128)
  config.eval.write_predictions = False
  results = train.train_and_evaluate(config, str(tmp_path / "bundled"))
  # The untrained encoder's cosine gives STS Pearson ~0.84 on the full dev set; three
  # small steps must not wreck it (a wrong weight mapping or pooling gives ~0).
  assert results["sts/pearson"] > 0.7
  assert 0.0 <= results["sst/accuracy"] <= 1.0


@needs_data
def test_config_is_built_once_and_the_models_config_json_read_once(
  tiny_bert_dir, tmp_path, monkeypatch
):
  """run_spec.build checks the config and reads the model's config.json; nothing after it
  rebuilds from the raw config or reads config.json again (tokenizer, weights, steps)."""
  import builtins

  from mtl_jax.config import run_spec

  model_json = os.path.realpath(os.path.join(tiny_bert_dir, "config.json"))
  opened, builds = [], []
  real_open, real_build = builtins.open, run_spec.build

  def counting_open(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == model_json:
      opened.append(file)
    return real_open(file, *args, **kwargs)

  def counting_build(*args, **kwargs):
    builds.append(args)
    return real_build(*args, **kwargs)

  monkeypatch.setattr(builtins, "open", counting_open)
  monkeypatch.setattr(run_spec, "build", counting_build)
  config = tiny_config(tiny_bert_dir, steps=2)
  config.eval.write_predictions = False
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert len(builds) == 1 and len(opened) == 1, (builds, opened)


def test_runs_of_one_model_in_a_process_share_its_predict_function(tiny_bert_dir):
  """Evaluation's jitted predict function is one per model (equal settings, equal model):
  a second run or tool in the process reuses its traced and compiled programs."""
  from mtl_jax.config import run_spec
  from mtl_jax.evaluate import make_predict_fn
  from mtl_jax.models import multitask

  def model(pooling="mean"):
    config = tiny_config(tiny_bert_dir)
    config.model.pooling = pooling
    spec = run_spec.build(config)
    return multitask.MultitaskModel(
      spec.bert, spec.model.pooling, spec.model.head_dropout, spec.model.heads
    )

  assert model() is not model() and model() == model()
  assert make_predict_fn(model()) is make_predict_fn(model())
  assert make_predict_fn(model("cls")) is not make_predict_fn(model())
