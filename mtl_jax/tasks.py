"""The three tasks of the CS224N multitask project, in one table.

Everything the code knows about a task apart from its head (`mtl_jax.models.heads`): its
data files and columns, what a label is, its loss, its dev metric, its prediction file
and the head output it is trained and scored on. Other modules read this table instead
of spelling task names.

`TASKS` is the order of the task axis everywhere: the [T, ...] stacks of batches,
per-task gradients and per-task statistics, and the traced task index the train step
selects a task's loss with (`mtl_jax.step.task_loss`, a `lax.switch` over this order).

  task   sentences  label                     loss                  metric    predictions
  sst    one        a class in 0..4           cross-entropy         accuracy  the argmax class
  quora  a pair     0 or 1 (is_duplicate)     BCE with logits       accuracy  logit > 0, as 0.0/1.0
  sts    a pair     a score in [0, 5]         mean squared error    pearson   the score, clipped

This module imports nothing from mtl_jax, so that every module can import it.
"""

from __future__ import annotations

import dataclasses

LABEL_KINDS = ("class", "binary", "score")
LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
METRICS = ("accuracy", "pearson")


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
  loss: str  # cross_entropy (on class logits) | binary_cross_entropy (on a logit) | mse
  metric: str  # accuracy | pearson (mtl_jax.metrics)
  output: str  # The head output (mtl_jax.models.heads) its loss and predictions read.
  prediction_column: str  # The header of its prediction files (mtl_jax.predictions).
  prediction_prefix: str  # Its prediction files: <prefix>-<split>-output.csv.
  num_classes: int = 0  # label="class" only.
  max_score: float = 0.0  # label="score" only.

  def __post_init__(self):
    for field, allowed in (("label", LABEL_KINDS), ("loss", LOSSES), ("metric", METRICS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"task {self.name}: {field} {getattr(self, field)!r} not in {allowed}")

  @property
  def is_pair(self) -> bool:
    """Two sentences per example (bi-encoded: two sequences; cross-encoded: one)."""
    return len(self.sentence_columns) == 2


_SPECS = (
  TaskSpec(
    name="sst",
    files={
      "train": "ids-sst-train.csv",
      "dev": "ids-sst-dev.csv",
      "test": "ids-sst-test-student.csv",
    },
    sentence_columns=("sentence",),
    label_column="sentiment",
    label="class",
    num_classes=5,
    loss="cross_entropy",
    metric="accuracy",
    output="sst",
    prediction_column="Predicted_Sentiment",
    prediction_prefix="sst",
  ),
  TaskSpec(
    name="quora",
    files={"train": "quora-train.csv", "dev": "quora-dev.csv"},
    sentence_columns=("sentence1", "sentence2"),
    label_column="is_duplicate",
    label="binary",
    loss="binary_cross_entropy",
    metric="accuracy",
    output="quora",
    prediction_column="Predicted_Is_Paraphrase",
    prediction_prefix="para",  # The starter's default names: para-{dev,test}-output.csv.
  ),
  TaskSpec(
    name="sts",
    files={"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
    sentence_columns=("sentence1", "sentence2"),
    label_column="similarity",
    label="score",
    max_score=5.0,
    loss="mse",
    metric="pearson",
    output="sts",
    # "Similiary" is the starter's own spelling (also in the prediction files committed
    # to that repo); kept so the files match what its graders expect.
    prediction_column="Predicted_Similiary",
    prediction_prefix="sts",
  ),
)

TASKS = tuple(s.name for s in _SPECS)  # ("sst", "quora", "sts"): the task axis order.
SPECS = {s.name: s for s in _SPECS}  # In TASKS order.


def get(name: str) -> TaskSpec:
  """The task called `name`; ValueError naming the valid ones otherwise."""
  if name not in SPECS:
    raise ValueError(f"unknown task {name!r}; valid: {list(TASKS)}")
  return SPECS[name]


def index(name: str) -> int:
  """The position of task `name` on the task axis."""
  get(name)
  return TASKS.index(name)
