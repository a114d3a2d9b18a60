"""Tasks: what a task is (`TaskSpec`), how a config declares one (`declare`), and the three
CS224N declarations every config starts from (`CS224N`).

Everything the code knows about a task apart from its head (`mtl_jax.models.heads`): its
data files and columns, what a label is, its loss, its dev metric, its prediction file
and the head output it is trained and scored on. A run's tasks are part of its config
(config.tasks, one declaration per task, in task-axis order); `mtl_jax.config.run_spec`
turns them into `RunSpec.tasks`, the tuple every module takes its tasks from.

The order of the declarations is the order of the task axis everywhere: the [T, ...]
stacks of batches, per-task gradients and per-task statistics, and the traced task index
the train step selects a task's loss with (`mtl_jax.step.task_loss`, a `lax.switch`).

A declaration (the keys of config.tasks.<name>; only the first four are required):

  files              split -> file name in config.data_dir (or a path); train and dev
                     are needed, test is optional (predictions are written for it)
  sentence_columns   one column (a sentence) or two (a pair)
  label_column       the label's column
  label              class (an integer in 0..num_classes-1) | binary (0 or 1) |
                     score (a number in [0, max_score])
  num_classes        label=class only (>= 2)
  max_score          label=score only (> 0)
  loss               '' = from the label: class cross_entropy, binary
                     binary_cross_entropy, score heads.sts_loss (mse | cosine | cosent)
  metric             '' = from the label: accuracy (class, binary), pearson (score)
  head               '' = from the label: a pair's binary head heads.quora, a pair's score
                     head heads.sts, otherwise the only one (`mtl_jax.models.heads`)
  prediction_column  '' = Predicted_<name>: the header of its prediction files
  prediction_prefix  '' = <name>: its prediction files are <prefix>-<split>-output.csv

The three CS224N tasks (`CS224N`, the default config.tasks):

  task   sentences  label                     loss                  metric    predictions
  sst    one        a class in 0..4           cross-entropy         accuracy  the argmax class
  quora  a pair     0 or 1 (is_duplicate)     BCE with logits       accuracy  logit > 0, as 0.0/1.0
  sts    a pair     a score in [0, 5]         mean squared error    pearson   the score, clipped

`TASKS`, `SPECS`, `get` and `index` are those three: the default config and the upgrade
of old config.json files use them; a run's code takes its tasks from its RunSpec, the
tools from its config.json, the study tools from a ledger's header.

This module imports nothing from mtl_jax, so that every module can import it.
"""

from __future__ import annotations

import dataclasses
import re

LABEL_KINDS = ("class", "binary", "score")
# The losses of each kind of label (the first: what its head's output is scored with).
LOSSES = {
  "class": ("cross_entropy",),
  "binary": ("binary_cross_entropy",),
  "score": ("mse", "cosine", "cosent"),
}
METRICS = {"class": ("accuracy",), "binary": ("accuracy",), "score": ("pearson",)}
SPLITS = ("train", "dev", "test")
NEEDED_SPLITS = ("train", "dev")
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
# Names a task cannot have: attributes of the heads module (mtl_jax.models.heads), whose
# task layers are named after their tasks, and the suffixes of its other outputs.
_RESERVED = ("dropout", "spec", "pooling", "hidden_size", "pool", "pool_dense", "shared_dense")
_RESERVED_SUFFIXES = ("_stream", "_unit", "_rank")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task: its files, its labels, and how it is trained, scored and written."""

  name: str
  # Split -> file name in the data directory (the CS224N names; Quora has no test file).
  files: dict[str, str] = dataclasses.field(hash=False)
  sentence_columns: tuple[str, ...]  # One column (a sentence) or two (a pair).
  label_column: str
  # class: an integer in 0..num_classes-1; binary: 0 or 1; score: a float in [0, max_score].
  label: str
  loss: str  # LOSSES[label]; '' until the heads resolve it (HeadSpec).
  metric: str  # accuracy | pearson (mtl_jax.scores)
  prediction_column: str  # The header of its prediction files (mtl_jax.prediction_files).
  prediction_prefix: str  # Its prediction files: <prefix>-<split>-output.csv.
  num_classes: int = 0  # label="class" only.
  max_score: float = 0.0  # label="score" only.
  head: str = ""  # Its head (mtl_jax.models.heads); '' until the heads resolve it.
  index: int = 0  # Its position on the task axis (the declaration order).

  def __post_init__(self):
    if self.label not in LABEL_KINDS:
      raise ValueError(f"tasks.{self.name}.label: {self.label!r} is not one of {LABEL_KINDS}")
    for field, allowed in (("loss", LOSSES), ("metric", METRICS)):
      value = getattr(self, field)
      if value and value not in allowed[self.label]:
        raise ValueError(
          f"tasks.{self.name}.{field}: {value!r} is not one for label={self.label!r}; "
          f"use one of {allowed[self.label]}"
        )

  @property
  def is_pair(self) -> bool:
    """Two sentences per example (bi-encoded: two sequences; cross-encoded: one)."""
    return len(self.sentence_columns) == 2

  @property
  def output(self) -> str:
    """The head output (mtl_jax.models.heads) its loss and predictions read."""
    return self.name

  @property
  def base_loss(self) -> str:
    """The loss of its head's output as a prediction (mse for every score loss): what
    SMART's divergence (mtl_jax.smart) and the plain loss (mtl_jax.step) read."""
    return LOSSES[self.label][0]


# The three CS224N tasks, declared as a config declares a task (config.tasks.<name>).
CS224N = {
  "sst": {
    "files": {
      "train": "ids-sst-train.csv",
      "dev": "ids-sst-dev.csv",
      "test": "ids-sst-test-student.csv",
    },
    "sentence_columns": ("sentence",),
    "label_column": "sentiment",
    "label": "class",
    "num_classes": 5,
    "prediction_column": "Predicted_Sentiment",
  },
  "quora": {
    "files": {"train": "quora-train.csv", "dev": "quora-dev.csv"},
    "sentence_columns": ("sentence1", "sentence2"),
    "label_column": "is_duplicate",
    "label": "binary",
    "prediction_column": "Predicted_Is_Paraphrase",
    "prediction_prefix": "para",  # The starter's default names: para-{dev,test}-output.csv.
  },
  "sts": {
    "files": {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
    "sentence_columns": ("sentence1", "sentence2"),
    "label_column": "similarity",
    "label": "score",
    "max_score": 5.0,
    # "Similiary" is the starter's own spelling (also in the prediction files committed
    # to that repo); kept so the files match what its graders expect.
    "prediction_column": "Predicted_Similiary",
  },
}

_REQUIRED = ("files", "sentence_columns", "label_column", "label")
_OPTIONAL = {
  "num_classes": 0,
  "max_score": 0.0,
  "loss": "",
  "metric": "",
  "head": "",
  "prediction_column": "",
  "prediction_prefix": "",
}


def declare(name: str, declaration: dict, index: int = 0) -> TaskSpec:
  """A config's declaration of task `name` (a plain dict, see the module doc) -> its
  TaskSpec at position `index`; ValueError 'tasks.<name>.<key>: ...' naming the first bad
  key. Checks what can be checked without the data (`mtl_jax.data.files` checks the
  columns and labels against the files)."""

  def fail(key: str, message: str):
    raise ValueError(f"tasks.{name}.{key}: {message}")

  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"tasks.{name}: a task name is lowercase letters, digits and _")
  if name in _RESERVED or name.endswith(_RESERVED_SUFFIXES):
    raise ValueError(
      f"tasks.{name}: a reserved name (the heads' own: {_RESERVED}, or ending in "
      f"{_RESERVED_SUFFIXES}); choose another"
    )
  d = dict(declaration)
  unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
  if unknown:
    fail(unknown[0], f"not a key of a task declaration; valid: {[*_REQUIRED, *_OPTIONAL]}")
  for key in _REQUIRED:
    if key not in d or d[key] in ("", (), None):
      fail(key, "missing: a task declares files, sentence_columns, label_column and label")
  files = dict(d["files"])
  bad = sorted(set(files) - set(SPLITS))
  if bad:
    fail(f"files.{bad[0]}", f"not a split; the splits are {SPLITS}")
  for split in NEEDED_SPLITS:
    if not files.get(split):
      fail(f"files.{split}", f"missing: every task needs a {split} file")
  columns = d["sentence_columns"]
  columns = (columns,) if isinstance(columns, str) else tuple(columns)
  if len(columns) not in (1, 2) or not all(isinstance(c, str) and c for c in columns):
    fail("sentence_columns", f"{columns!r}: one column (a sentence) or two (a pair)")
  label = d["label"]
  if label not in LABEL_KINDS:
    fail("label", f"{label!r} is not one of {LABEL_KINDS}")
  o = {k: d.get(k, v) for k, v in _OPTIONAL.items()}
  if label == "class" and not (isinstance(o["num_classes"], int) and o["num_classes"] >= 2):
    fail("num_classes", f"{o['num_classes']!r}: label='class' needs an integer >= 2")
  if label != "class" and o["num_classes"]:
    fail("num_classes", f"only for label='class', not {label!r}")
  if label == "score" and not (
    isinstance(o["max_score"], (int, float)) and 0 < o["max_score"] < float("inf")
  ):
    fail("max_score", f"{o['max_score']!r}: label='score' needs a number > 0")
  if label != "score" and o["max_score"]:
    fail("max_score", f"only for label='score', not {label!r}")
  return TaskSpec(
    name=name,
    files=files,
    sentence_columns=columns,
    label_column=d["label_column"],
    label=label,
    loss=o["loss"] or ("" if label == "score" else LOSSES[label][0]),
    metric=o["metric"] or METRICS[label][0],
    prediction_column=o["prediction_column"] or f"Predicted_{name}",
    prediction_prefix=o["prediction_prefix"] or name,
    num_classes=o["num_classes"],
    max_score=float(o["max_score"]),
    head=o["head"],
    index=index,
  )


def declare_all(declarations: dict) -> tuple[TaskSpec, ...]:
  """{name: declaration}, in task-axis order -> the tasks' TaskSpecs; ValueError naming
  the task and key of the first bad one (or 'tasks' when there is none)."""
  if not declarations:
    raise ValueError("tasks: no task declared")
  specs = tuple(declare(name, d, i) for i, (name, d) in enumerate(declarations.items()))
  prefixes = [s.prediction_prefix for s in specs]
  for i, s in enumerate(specs):
    if s.prediction_prefix in prefixes[:i]:
      raise ValueError(
        f"tasks.{s.name}.prediction_prefix: {s.prediction_prefix!r} is another task's too: "
        "their prediction files would overwrite each other"
      )
  return specs


def names(specs: tuple[TaskSpec, ...]) -> tuple[str, ...]:
  """The tasks' names, in task-axis order."""
  return tuple(s.name for s in specs)


def find(specs: tuple[TaskSpec, ...], name: str) -> TaskSpec:
  """The task called `name` among `specs`; ValueError naming the valid ones otherwise."""
  for s in specs:
    if s.name == name:
      return s
  raise ValueError(f"unknown task {name!r}; valid: {list(names(specs))}")


DEFAULT = declare_all(CS224N)  # The default config.tasks, as declared.
TASKS = names(DEFAULT)  # ("sst", "quora", "sts"): the CS224N task axis order.
SPECS = {s.name: s for s in DEFAULT}  # In TASKS order.


def get(name: str) -> TaskSpec:
  """The CS224N task called `name`; ValueError naming the valid ones otherwise."""
  return find(DEFAULT, name)


def index(name: str) -> int:
  """The position of CS224N task `name` on the task axis."""
  return get(name).index
