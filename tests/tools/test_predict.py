"""python -m mtl_jax.predict: a trained run's predictions for new input, per task."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA_DIR, needs_data, tiny_config

from mtl_jax import prediction_files as predictions
from mtl_jax import tasks, train
from mtl_jax.data import files
from mtl_jax.tools import predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
  """A packed run whose longest bucket (128) is past the tiny model's 64 positions, as a
  packed run may have: predict must batch as the run evaluated (packed), since an unpacked
  batch padded to 128 gave NaN hidden states (all-zero classes, a NaN STS error)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(tiny_bert_dir, steps=2, length_buckets=(8, 128))
  config.model.max_length = 48
  assert config.train.packing
  train.train_and_evaluate(config, workdir)
  return workdir


def _first_dev_rows(tmp_path, task: str, n: int) -> str:
  """The header and first n rows of the task's dev file (the rows the run evaluated)."""
  src = os.path.join(DATA_DIR, tasks.get(task).files["dev"])
  with open(src, encoding="utf-8") as f:
    lines = f.readlines()[: n + 1]
  path = tmp_path / f"{task}-dev-head.csv"
  path.write_text("".join(lines), encoding="utf-8")
  return str(path)


@needs_data
@pytest.mark.parametrize("task", tasks.TASKS)
def test_predictions_on_a_labelled_file_match_the_runs_dev_predictions(trained_run, tmp_path, task):
  """Same ids, same values as the run's own dev file, and the metric computed on them."""
  out = str(tmp_path / "out.csv")
  scores = predict.predict_file(trained_run, task, _first_dev_rows(tmp_path, task, 40), out)
  got_task, ids, values = predictions.read_predictions(out)
  run_file = os.path.join(trained_run, "predictions", predictions.output_filename(task, "dev"))
  _, run_ids, run_values = predictions.read_predictions(run_file)
  assert got_task == task and ids == run_ids
  np.testing.assert_allclose(values, run_values, rtol=1e-5, atol=1e-6)
  labels = files.read_task_file(_first_dev_rows(tmp_path, task, 40), task, "dev", True).labels
  expected = "accuracy" if task != "sts" else "pearson"
  if task == "sts":
    want = np.corrcoef(values, labels)[0, 1]
  else:
    want = np.mean(values == labels)
  assert scores[expected] == pytest.approx(want, abs=1e-6)


@needs_data
def test_a_labelled_input_with_an_undefined_metric_says_so_instead_of_0(trained_run, tmp_path):
  """STS rows whose labels are all equal: predictions are written, and the Pearson
  correlation is reported undefined (it printed `sts pearson: 0.0000`)."""
  src = _first_dev_rows(tmp_path, "sts", 3)
  lines = open(src, encoding="utf-8").read().splitlines()
  same = [lines[0]] + ["\t".join(line.split("\t")[:-1] + ["2.5"]) for line in lines[1:]]
  (tmp_path / "same.csv").write_text("\n".join(same) + "\n", encoding="utf-8")
  out = tmp_path / "out.csv"
  scores = predict.predict_file(trained_run, "sts", str(tmp_path / "same.csv"), str(out))
  assert scores == {
    "pearson": f"undefined: {tmp_path / 'same.csv'} has 3 rows whose similarity are all 2.5"
  }
  assert len(predictions.read_predictions(str(out))[1]) == 3


@needs_data
def test_plain_text_through_the_command_line(trained_run, tmp_path):
  text = tmp_path / "pairs.txt"
  text.write_text("what is a cat ?\twhat is a dog ?\nhow do you do\thow are you\n")
  out = tmp_path / "para.csv"
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.predict",
      f"--workdir={trained_run}",
      "--task=quora",
      f"--input={text}",
      f"--output={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  task, ids, values = predictions.read_predictions(str(out))
  assert task == "quora" and ids == ["1", "2"]
  assert set(values.tolist()) <= {0.0, 1.0}


@needs_data
def test_blank_or_unpaired_lines_are_refused_naming_them(tmp_path):
  text = tmp_path / "in.txt"
  text.write_text("a good movie\n\nbad\n")
  with pytest.raises(files.DataError, match=r"line\(s\) \[2\]"):
    predict.read_input(str(text), "sst")
  text.write_text("one\ttwo\nonly one\n")
  with pytest.raises(files.DataError, match=r"line\(s\) \[2\].*two tab-separated"):
    predict.read_input(str(text), "sts")


def test_missing_run_is_one_clear_line(tmp_path):
  text = tmp_path / "in.txt"
  text.write_text("a good movie\n")
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.predict",
      f"--workdir={tmp_path / 'nope'}",
      "--task=sst",
      f"--input={text}",
      f"--output={tmp_path / 'o.csv'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode != 0 and "Traceback" not in run.stderr
  assert "error:" in run.stderr and "config.json not found" in run.stderr
