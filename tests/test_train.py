"""End-to-end trainer tests: the whole train_and_evaluate on a tiny random BERT and a slice
of the real data (fast), resume after interruption, and one short run on the bundled model."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs import default
from mtl_jax import train
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.data import schedules
from mtl_jax.data.files import default_data_dir

DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason=f"no data at {DATA_DIR}")


def shrink(config, model_dir: str):
  """`config` on the tiny model, 40 rows of each data file and 4 small steps (in place)."""
  config.model.path = model_dir
  config.model.max_length = 32
  config.data_dir = DATA_DIR
  config.data_limit = 40
  config.train.length_buckets = (16, 32)
  config.train.seqs_per_task = 8
  config.train.steps = 4
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.eval.seqs_per_batch = 16
  return config


def tiny_config(model_dir: str, **train_overrides):
  config = shrink(default.get_config(), model_dir)
  config.grad.method = "pcgrad"
  config.train.update(train_overrides)
  return config


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def restored_trainable(config, workdir):
  _, state, _, _ = train.init_state(config)
  return Checkpointer(workdir, 1, 1).restore(state)[0].trainable


def interrupt_at(monkeypatch, step: int) -> None:
  """Makes the trainer's draw of `step` raise KeyboardInterrupt (a host-side Ctrl-C). It
  patches `Batches.__call__`, not the batch builder, which set-up also calls (slot choice)."""
  draw = schedules.Batches.__call__

  def interrupted(self, s):
    if s == step:
      raise KeyboardInterrupt
    return draw(self, s)

  monkeypatch.setattr(schedules.Batches, "__call__", interrupted)


def assert_same_run(config, straight: str, resumed: str, last_step: int) -> None:
  """The resumed workdir ends with the straight one's parameters and last loss, bitwise."""
  a, b = restored_trainable(config, straight), restored_trainable(config, resumed)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  losses = lambda w: {r["step"]: r["loss"] for r in read_metrics(w) if "loss" in r}
  assert losses(straight)[last_step] == losses(resumed)[last_step]


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
