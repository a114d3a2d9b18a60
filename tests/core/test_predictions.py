"""CS224N prediction files: exact format and round trips."""

import numpy as np
import pytest

from mtl_jax import prediction_files as P


def test_exact_starter_format(tmp_path):
  path = tmp_path / "sst-dev-output.csv"
  P.write_predictions(str(path), "sst", ["a7d5", "33cf"], np.array([4, 2]))
  assert path.read_text() == "id \t Predicted_Sentiment \na7d5 , 4 \n33cf , 2 \n"
  P.write_predictions(str(path), "quora", ["x"], np.array([1.0], np.float32))
  assert path.read_text() == "id \t Predicted_Is_Paraphrase \nx , 1.0 \n"
  P.write_predictions(str(path), "sts", ["x"], [2.75])
  assert path.read_text() == "id \t Predicted_Similiary \nx , 2.75 \n"


@pytest.mark.parametrize(
  "task,values",
  [
    ("sst", np.array([0, 4, 3, 1], np.int32)),
    ("quora", np.array([0.0, 1.0, 1.0, 0.0], np.float32)),
    ("sts", np.random.default_rng(0).uniform(-1, 6, 4).astype(np.float32)),
  ],
)
def test_round_trip(tmp_path, task, values):
  ids = ["a1", "b2", "c3", "d4"]
  path = tmp_path / "out" / P.output_filename(task, "test")  # parent is created
  P.write_predictions(str(path), task, ids, values)
  got_task, got_ids, got = P.read_predictions(str(path))
  assert (got_task, got_ids) == (task, ids)
  np.testing.assert_array_equal(got.astype(values.dtype), values)  # exact, not approx
  assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_output_filenames_match_starter():
  assert P.output_filename("sst", "dev") == "sst-dev-output.csv"
  assert P.output_filename("quora", "test") == "para-test-output.csv"
  assert P.output_filename("sts", "dev") == "sts-dev-output.csv"


@pytest.mark.parametrize(
  "task,ids,values,match",
  [
    ("sst", ["a", "b"], [1], "2 ids but 1"),
    ("sst", ["a"], [5], "not a class"),
    ("sst", ["a"], [1.5], "not a class"),
    ("quora", ["a"], [0.7], "not 0 or 1"),
    ("sts", ["a"], [np.nan], "not finite"),
    ("sts", ["a b"], [1.0], "cannot be written"),
    ("nli", ["a"], [1], "unknown task"),
  ],
)
def test_refuses_bad_input_and_keeps_old_file(tmp_path, task, ids, values, match):
  path = tmp_path / "p.csv"
  path.write_text("old")
  with pytest.raises(ValueError, match=match):
    P.write_predictions(str(path), task, ids, values)
  assert path.read_text() == "old"
