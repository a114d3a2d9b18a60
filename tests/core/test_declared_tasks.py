"""Tasks declared in the config, end to end on a tiny random BERT: a user's task from a small
file this test writes (docs/tasks.md's example), and configs/four_tasks.py (CFIMDB beside
the three CS224N tasks) trained, resumed and predicted on a slice of the data."""

from __future__ import annotations

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA_DIR, interrupt_at, needs_data, read_metrics, shrink

from mtl_jax import prediction_files, scores, tasks, train
from mtl_jax.config import ConfigError, defaults
from mtl_jax.models import heads
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.tools import diagnose, export, predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["good", "bad", "great", "awful", "fine", "poor", "nice", "dull"]


def write_toy_files(directory) -> dict[str, str]:
  """A one-sentence binary task in the CS224N layout (an unnamed index column, then id, the
  sentence and the label; tab-separated): 16 train rows, 8 dev, 4 test (no label)."""
  rng = np.random.default_rng(0)
  paths = {}
  for split, n in (("train", 16), ("dev", 8), ("test", 4)):
    header = "\tid\ttext" + ("\tlabel" if split != "test" else "")
    rows = []
    for i in range(n):
      text = " ".join(rng.choice(WORDS, 4))
      label = f"\t{i % 2}" if split != "test" else ""
      rows.append(f"{i}\t{split}{i}\t{text}{label}")
    path = os.path.join(directory, f"toy-{split}.tsv")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join([header, *rows]) + "\n")
    paths[split] = path
  return paths


def _dev_labels(path: str) -> np.ndarray:
  with open(path, encoding="utf-8") as f:
    return np.array([float(line.rstrip("\n").split("\t")[-1]) for line in f.readlines()[1:]])


@needs_data
def test_a_users_task_from_a_small_file_trains_and_predicts(tiny_bert_dir, tmp_path):
  paths = write_toy_files(tmp_path)
  config = shrink(defaults.get_config(), tiny_bert_dir)
  defaults.add_task(
    config,
    "toy",
    files=paths,  # Absolute paths; names are read in config.data_dir.
    sentence_columns=("text",),
    label_column="label",
    label="binary",
  )
  config.task_order = ("sst", "toy")  # Train SST and the toy task only.
  config.train.steps, config.train.checkpoint_every = 3, 3
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)

  assert set(results) == {"sst/accuracy", "toy/accuracy", "overall"}
  assert results["overall"] == pytest.approx(
    (results["sst/accuracy"] + results["toy/accuracy"]) / 2
  )
  assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [1, 2, 3]
  dev_file = os.path.join(workdir, "predictions", "toy-dev-output.csv")
  task, ids, values = prediction_files.read_predictions(
    dev_file,
    (
      tasks.declare(
        "toy",
        {"files": paths, "sentence_columns": "text", "label_column": "label", "label": "binary"},
      ),
    ),
  )
  assert task == "toy" and ids == [f"dev{i}" for i in range(8)]
  assert set(values) <= {0.0, 1.0}
  assert results["toy/accuracy"] == pytest.approx(np.mean(values == _dev_labels(paths["dev"])))
  with open(dev_file, encoding="utf-8") as f:
    assert f.readline() == "id \t Predicted_toy \n"
  assert os.path.isfile(os.path.join(workdir, "predictions", "toy-test-output.csv"))

  plain = tmp_path / "new.txt"
  plain.write_text("good nice fine\nawful dull poor\n", encoding="utf-8")
  out = str(tmp_path / "new-out.csv")
  assert predict.predict_file(workdir, "toy", str(plain), out) == {}
  with open(out, encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == "id \t Predicted_toy " and [x.split(" , ")[0] for x in lines[1:]] == ["1", "2"]
  with pytest.raises(ConfigError, match=r"unknown task 'sts'; valid: \['sst', 'toy'\]"):
    predict.predict_file(workdir, "sts", str(plain), out)


def _four_tasks_config():
  spec = importlib.util.spec_from_file_location(
    "four_tasks", os.path.join(ROOT, "configs", "four_tasks.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@needs_data
def test_the_four_task_config_trains_resumes_and_predicts(tiny_bert_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "four")
  config = shrink(_four_tasks_config(), tiny_bert_dir)
  with monkeypatch.context() as m:
    interrupt_at(m, 3)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)
  assert Checkpointer(workdir, 1, 1).latest_step() == 3
  three = shrink(defaults.get_config(), tiny_bert_dir)  # Not the run's tasks: refused.
  with pytest.raises(ConfigError, match=r"config\.task_order: checkpoint has"):
    train.train_and_evaluate(three, workdir)
  results = train.train_and_evaluate(shrink(_four_tasks_config(), tiny_bert_dir), workdir)

  metrics = ("sst/accuracy", "quora/accuracy", "sts/pearson", "cfimdb/accuracy")
  assert set(results) == {*metrics, "overall"}
  by_hand = (
    results["sst/accuracy"]
    + results["quora/accuracy"]
    + (results["sts/pearson"] + 1) / 2
    + results["cfimdb/accuracy"]
  ) / 4
  assert results["overall"] == pytest.approx(by_hand)
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert rows[-1]["step"] == 4 and "task_loss/cfimdb" in rows[-1]
  for name in ("cfimdb-dev-output.csv", "cfimdb-test-output.csv"):
    assert os.path.isfile(os.path.join(workdir, "predictions", name))

  head = tmp_path / "cfimdb-dev-head.csv"
  with open(os.path.join(DATA_DIR, "ids-cfimdb-dev.csv"), encoding="utf-8") as f:
    head.write_text("".join(f.readlines()[:41]), encoding="utf-8")  # The 40 rows evaluated.
  out = str(tmp_path / "cfimdb-out.csv")
  got = predict.predict_file(workdir, "cfimdb", str(head), out)
  assert got["accuracy"] == pytest.approx(results["cfimdb/accuracy"])

  info = export.export(workdir, str(tmp_path / "export"))
  assert [t["name"] for t in info["tasks"]] == ["sst", "quora", "sts", "cfimdb"]
  hidden = info["heads"]["sst"]["params"]["sst/kernel"][0]
  assert info["heads"]["cfimdb"]["params"] == {"cfimdb/kernel": [hidden, 2], "cfimdb/bias": [2]}


def test_diagnose_reads_the_tasks_of_the_logged_rows():
  names = ("sst", "quora", "sts", "cfimdb")
  cosine = -np.eye(4) + 2 * np.eye(4)  # Orthogonal pairs: cosine 0, no conflict.
  rows = [
    {
      "step": s,
      "grad/cosine": cosine.tolist(),
      **{f"grad/grad_norm/{t}": 1.0 + k for k, t in enumerate(names)},
      **{f"task_loss/{t}": 0.5 for t in names},
    }
    for s in (1, 2)
  ]
  assert diagnose.task_names(rows) == names
  summary = diagnose.summarize(rows)
  assert len(summary["pairs"]) == 6 and "sts-cfimdb" in summary["pairs"]
  assert summary["tasks"]["cfimdb"]["mean_grad_norm"] == 4.0


def test_overall_is_the_mean_of_the_normalised_metrics():
  specs = (*tasks.DEFAULT, tasks.declare("imdb", {**tasks.CS224N["sst"], "num_classes": 2}, 3))
  results = {"sst/accuracy": 0.5, "quora/accuracy": 0.8, "sts/pearson": -0.2, "imdb/accuracy": 0.9}
  assert scores.overall(results, scores.dev_metrics(specs)) == pytest.approx(
    (0.5 + 0.8 + 0.4 + 0.9) / 4
  )
  three = {k: v for k, v in results.items() if not k.startswith("imdb")}
  assert scores.overall(three, scores.DEV_METRICS) == scores.overall_score(0.5, 0.8, -0.2)


class _Heads(nn.Module):
  spec: heads.HeadSpec

  @nn.compact
  def __call__(self, pooled):
    return heads.TaskHeads(0.0, self.spec, "mean", pooled.shape[-1])(pooled)


def test_heads_of_declared_tasks_against_numpy():
  """A one-sentence score: max_score sigmoid(x W + b); a pair of classes (bi-encoded): the
  linear layer on [u; v; |u - v|; u * v]; a one-sentence binary label: the logit x W + b."""
  declared = {
    "stars": {**tasks.CS224N["sst"], "label": "score", "max_score": 10.0, "num_classes": 0},
    "nli": {**tasks.CS224N["quora"], "label": "class", "num_classes": 3},
    "spam": {**tasks.CS224N["sst"], "label": "binary", "num_classes": 0},
  }
  for name, d in declared.items():
    d["prediction_prefix"] = name
  spec = heads.HeadSpec(tasks=tasks.declare_all(declared))
  pooled = jax.random.normal(jax.random.key(0), (6, 8))
  model = _Heads(spec)
  params = model.init(jax.random.key(1), pooled)
  out = model.apply(params, pooled)
  p = jax.tree.map(np.asarray, params["params"]["TaskHeads_0"])
  x = np.asarray(pooled, np.float64)
  linear = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  np.testing.assert_allclose(out["stars"], 10 / (1 + np.exp(-linear("stars", x)[:, 0])), rtol=1e-5)
  u, v = x[:3], x[3:]
  features = np.concatenate([u, v, np.abs(u - v), u * v], -1)
  np.testing.assert_allclose(out["nli"], linear("nli", features), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["spam"], linear("spam", x)[:, 0], rtol=1e-5, atol=1e-6)
  assert out["nli"].shape == (3, 3) and jnp.all(out["stars"] > 0)
