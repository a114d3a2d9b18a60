"""Tasks declared in the config (config.tasks, config.task_order; docs/tasks.md): each bad
declaration is one error naming the task and the key, checked once at the config boundary
(run_spec.build) or, for what needs the file, when the data is read."""

from __future__ import annotations

import json

import pytest
from conftest import default_config_with

from mtl_jax import tasks
from mtl_jax.config import ConfigError, defaults, resume, run_spec, upgrade
from mtl_jax.data import files

TOY = {
  "files": {"train": "toy-train.tsv", "dev": "toy-dev.tsv"},
  "sentence_columns": ("text",),
  "label_column": "label",
  "label": "binary",
}


def _with_toy(**changes):
  """configs/default.py plus the toy task, its declaration changed by `changes` (None: the
  key removed)."""
  config = default_config_with()
  declaration = {k: v for k, v in {**TOY, **changes}.items() if v is not None}
  defaults.add_task(config, "toy", **declaration)
  return config


def _refused(config, match: str):
  with pytest.raises(ConfigError, match=match) as e:
    run_spec.build(config)
  assert "\n" not in str(e.value)  # One line.


def test_the_default_tasks_are_the_three_cs224n_ones_in_order():
  spec = run_spec.build(default_config_with())
  assert spec.task_names == ("sst", "quora", "sts") == tasks.TASKS
  assert [t.index for t in spec.tasks] == [0, 1, 2]
  assert [(t.head, t.loss) for t in spec.tasks] == [
    ("linear", "cross_entropy"),
    ("features", "binary_cross_entropy"),
    ("cosine", "mse"),
  ]


def test_a_declared_task_takes_its_defaults_from_its_label():
  spec = run_spec.build(_with_toy())
  toy = spec.task("toy")
  assert spec.task_names == ("sst", "quora", "sts", "toy") and toy.index == 3
  assert (toy.loss, toy.metric, toy.head) == ("binary_cross_entropy", "accuracy", "linear")
  assert (toy.prediction_column, toy.prediction_prefix) == ("Predicted_toy", "toy")
  assert spec.config.train.epoch_examples.toy == 0


def test_a_missing_key_is_refused():
  _refused(_with_toy(label_column=None), r"^config\.tasks\.toy\.label_column: missing")


def test_an_unknown_key_is_refused():
  _refused(_with_toy(lable="binary"), r"^config\.tasks\.toy\.lable: not a key")


def test_an_unknown_label_kind_is_refused():
  _refused(_with_toy(label="ordinal"), r"^config\.tasks\.toy\.label: 'ordinal' is not one of")


def test_a_loss_of_another_label_kind_is_refused():
  _refused(_with_toy(loss="mse"), r"^config\.tasks\.toy\.loss: 'mse' is not one for label='binary'")


def test_a_metric_of_another_label_kind_is_refused():
  _refused(_with_toy(metric="pearson"), r"^config\.tasks\.toy\.metric: 'pearson'")


def test_a_head_of_another_kind_of_task_is_refused():
  # A one-sentence task has one head; 'cosine' compares the two sentences of a pair.
  _refused(_with_toy(head="cosine"), r"^config\.tasks\.toy\.head: 'cosine' is not a head of a one")
  pair = {"sentence_columns": ("a", "b")}
  _refused(_with_toy(head="relu_cosine", **pair), r"^config\.tasks\.toy\.head: 'relu_cosine'")
  run_spec.build(_with_toy(head="cosine", **pair))  # A binary pair's head: accepted.


def test_classes_need_their_count_and_scores_their_range():
  _refused(_with_toy(label="class"), r"^config\.tasks\.toy\.num_classes: 0: label='class' needs")
  _refused(_with_toy(label="score"), r"^config\.tasks\.toy\.max_score: 0\.0: label='score' needs")
  _refused(_with_toy(num_classes=3), r"^config\.tasks\.toy\.num_classes: only for label='class'")


def test_a_missing_needed_split_is_refused():
  _refused(_with_toy(files={"train": "toy-train.tsv"}), r"^config\.tasks\.toy\.files\.dev: missing")
  _refused(
    _with_toy(files={**TOY["files"], "valid": "x"}), r"^config\.tasks\.toy\.files\.valid: not a"
  )


def test_two_tasks_with_one_name_are_refused():
  config = _with_toy()
  with pytest.raises(ConfigError, match=r"^config\.tasks\.toy: declared twice"):
    defaults.add_task(config, "toy", **TOY)
  config.task_order = ("sst", "toy", "toy")
  _refused(config, r"^config\.task_order: lists \['toy'\] twice")


def test_two_tasks_with_one_prediction_file_are_refused():
  _refused(_with_toy(prediction_prefix="sst"), r"^config\.tasks\.toy\.prediction_prefix: 'sst'")


def test_task_order_names_declared_tasks_only():
  config = default_config_with()
  config.task_order = ("sst", "mnli")
  _refused(config, r"^config\.task_order: 'mnli' is not a task of config\.tasks")


def test_reserved_names_are_refused():
  config = default_config_with()
  defaults.add_task(config, "pool", **TOY)
  _refused(config, r"^config\.tasks\.pool: a reserved name")


def test_a_cap_of_a_task_not_trained_is_refused():
  config = _with_toy()
  config.task_order = ("sst", "quora", "sts")
  config.train.epoch_examples.toy = 10
  _refused(config, r"^config\.train\.epoch_examples\.toy: caps task 'toy'")


def _write(path, header: str, rows: list[str]) -> str:
  path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
  return str(path)


def _toy_spec(**changes) -> tasks.TaskSpec:
  return tasks.declare("toy", {**TOY, **changes}, 3)


def test_a_column_missing_from_the_file_names_the_task_key(tmp_path):
  _write(tmp_path / "toy-train.tsv", "\tid\tsentence\tlabel", ["0\ta\thello\t1"])
  with pytest.raises(files.DataError, match=r"config\.tasks\.toy\.sentence_columns"):
    files.load_split(str(tmp_path), _toy_spec(), "train")
  _write(tmp_path / "toy-train.tsv", "\tid\ttext\tgold", ["0\ta\thello\t1"])
  with pytest.raises(files.DataError, match=r"config\.tasks\.toy\.label_column"):
    files.load_split(str(tmp_path), _toy_spec(), "train")


def test_a_label_out_of_its_kinds_range_names_the_task_key(tmp_path):
  _write(tmp_path / "toy-train.tsv", "\tid\ttext\tlabel", ["0\ta\thello\t1", "1\tb\tbye\t2"])
  with pytest.raises(files.DataError, match=r"toy-train.tsv:3: .*config\.tasks\.toy\.label="):
    files.load_split(str(tmp_path), _toy_spec(), "train")
  spec = _toy_spec(label="class", num_classes=3)  # 2 is a class of three.
  assert files.load_split(str(tmp_path), spec, "train").labels.tolist() == [1, 2]


def test_a_missing_file_names_the_task_key(tmp_path):
  with pytest.raises(files.DataError, match=r"not found \(config\.tasks\.toy\.files\.train\)"):
    files.load_split(str(tmp_path), _toy_spec(), "train")


def test_an_old_config_json_loads_as_the_three_tasks():
  saved = json.loads(default_config_with().to_json_best_effort())
  del saved["tasks"], saved["task_order"]
  config = upgrade.upgrade(saved)
  assert run_spec.build(config).tasks == run_spec.build(default_config_with()).tasks
  assert resume.resume_mismatches(saved, default_config_with()) == []


def test_a_config_json_with_a_fourth_task_loads_and_resumes_only_as_it():
  config = _with_toy()
  saved = json.loads(config.to_json_best_effort())
  loaded = upgrade.upgrade(saved)
  assert run_spec.build(loaded).task_names == ("sst", "quora", "sts", "toy")
  assert resume.resume_mismatches(saved, loaded) == []
  keys = {k for k, _, _ in resume.resume_mismatches(saved, default_config_with())}
  assert "task_order" in keys and "tasks.toy.label" in keys
