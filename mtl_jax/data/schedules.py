"""Task schedules: which task(s) each train step trains, and which batch of each.

A schedule is a pure function of (seed, step, dataset sizes, config): the batch of step k is
computed from k alone, never from state carried across steps, so a run resumed at step k
replays exactly the batches of an uninterrupted one.

Kinds (`config.train.schedule`):

- `all_tasks` (default): every step holds one batch of every task, stacked [T, S, L], which
  is what the per-task gradient methods need. Each task cycles through its own epoch
  shuffles independently. With one batch of each task per step, "oversampling the smaller
  tasks to the largest" and "cycling each task independently" are the same thing: while the
  largest task goes through one epoch, a task n times smaller goes through n fresh shuffles
  of itself. The one knob that changes the balance is undersampling (below).
- One task per step, drawn at random with p_t ∝ B_t^α (seeded, a function of the step):
  `proportional` (α = 1), `sqrt` (α = 1/2), `annealed` (α = 1 − 0.8 e / (E − 1) in epoch
  e = 0..E−1, Stickland & Murray 2019, "BERT and PALs"; α = 1 when E = 1).
- `sequential`: each epoch, all B_t batches of the first task, then of the next (task-axis order).
- `round_robin`: step k trains task k mod T.

Undersampling (`config.train.epoch_examples`, per task, 0 = the whole set): a task's epoch is
a fresh random subset of that many examples (the first N of the epoch's shuffle), for every
kind above.

Sizes and epochs. N_t is task t's examples per epoch (capped), b_t its examples per batch
(`seqs_per_task` SST sentences, `seqs_per_task / 2` pairs) and B_t = ceil(N_t / b_t) its
batches per epoch. Sampling weights use B_t, not N_t: an SST batch holds twice the examples
of a pair batch, and p ∝ B_t is what keeps `proportional` uniform over examples (every example
as likely to be trained on as any other, as if the sets were pooled); with equal batch sizes
it is the paper's p ∝ N. An epoch of a one-task schedule is P = Σ_t B_t steps: one
sequential pass, and in expectation one proportional pass. E = ceil(train.steps / P) is the
number of epochs the run covers (the last may be partial).

Streams. A one-task step takes its task's next batch: the task's batch number is the count
of earlier steps that trained it, derived from the step (O(steps) numpy, cached per epoch)
and fed to `batching.train_batch`, so length grouping and undersampling work per task as
they do for `all_tasks`. Batches run on across a task's epoch boundaries (the B_t batches of
one epoch take B_t·b_t ≥ N_t examples), exactly as the `all_tasks` stream does.

`Batches` holds a run's sets, schedule, buckets and packing plan: `batches(k)` is the batch
the trainer draws at step k, and `batches.every_task(k)` a batch of every task at step k
(each task's next one, under a one-task schedule), on which `mtl_jax.diagnose` compares the
tasks' gradients. `train.train_batches` builds it from a config.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mtl_jax import tasks as tasks_lib
from mtl_jax.data import batching, packing
from mtl_jax.data.files import DataError

SCHEDULES = ("all_tasks", "proportional", "sqrt", "annealed", "sequential", "round_robin")
ONE_TASK_SCHEDULES = SCHEDULES[1:]
_FIXED_ALPHA = {"proportional": 1.0, "sqrt": 0.5}
# Entropy of the task draws: batching keys its shuffles with [seed, task index, epoch] and
# its length-group orders with [seed, T, group]; this key, T + 1, is distinct from both.


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Everything that fixes a run's data order (hashable: per-epoch results are cached)."""

  kind: str
  epoch_sizes: tuple[int, ...]  # Examples of each task (task-axis order) per epoch, caps applied.
  seqs_per_task: int  # Sequences per task batch.
  steps: int  # train.steps: the number of epochs E that annealing spreads over.
  seed: int
  group_steps: int = 0  # train.length_grouping.
  # b_t, examples per batch of each task (batching.examples_per_batch of its data); () = the
  # bi-encoder layout (S sentences, S/2 pairs). Cross-encoded pairs fill a row each.
  batch_examples: tuple[int, ...] = ()
  balance_steps: int = 0  # train.token_balancing.
  names: tuple[str, ...] = tasks_lib.TASKS  # The tasks, in task-axis order.
  pairs: tuple[bool, ...] = tuple(s.is_pair for s in tasks_lib.DEFAULT)  # Pair tasks.

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"schedule {self.kind!r} is not one of {SCHEDULES}")
    if not len(self.epoch_sizes) == len(self.names) == len(self.pairs):
      raise ValueError(
        f"{len(self.epoch_sizes)} epoch sizes for the {len(self.names)} tasks {self.names}"
      )

  @property
  def one_task(self) -> bool:
    return self.kind in ONE_TASK_SCHEDULES


def make(
  kind: str,
  sizes: tuple[int, ...],
  caps: tuple[int, ...],
  seqs_per_task: int,
  steps: int,
  seed: int,
  group_steps: int = 0,
  batch_examples: tuple[int, ...] = (),
  balance_steps: int = 0,
  task_specs: tuple[tasks_lib.TaskSpec, ...] = tasks_lib.DEFAULT,
) -> Schedule:
  """The schedule for datasets of `sizes` examples, each capped at `caps` per epoch (0 = not),
  of the tasks `task_specs`."""
  epoch_sizes = tuple(min(n, c) if c else n for n, c in zip(sizes, caps, strict=True))
  return Schedule(
    kind,
    epoch_sizes,
    seqs_per_task,
    steps,
    seed,
    group_steps,
    tuple(batch_examples),
    balance_steps,
    tasks_lib.names(task_specs),
    tuple(t.is_pair for t in task_specs),
  )


def _per_batch(s: Schedule) -> list[int]:
  """b_t, the examples of each task in one of its batches."""
  return list(s.batch_examples) or [
    s.seqs_per_task // 2 if pair else s.seqs_per_task for pair in s.pairs
  ]


def batches_per_epoch(s: Schedule) -> np.ndarray:
  """B_t = ceil(N_t / b_t) for each task."""
  return -(-np.asarray(s.epoch_sizes) // np.asarray(_per_batch(s)))


def check_batch_sizes(s: Schedule) -> None:
  """Refuses (DataError) a schedule whose batches hold more examples of a task than the task
  has per epoch: every batch would repeat each of its examples, silently (40 SST rows in a
  batch of 64: each one once or twice a batch; 80 rows at train.seqs_per_task=500: 6-7 times)."""
  short = [
    (t, n, b) for t, n, b in zip(s.names, s.epoch_sizes, _per_batch(s), strict=True) if b > n
  ]
  if not short:
    return
  # The largest even train.seqs_per_task whose batches fit every task's examples.
  fits = min(n * s.seqs_per_task // b for n, b in zip(s.epoch_sizes, _per_batch(s)))
  fits -= fits % 2
  sets = "; ".join(
    f"{t} has {n} training examples per epoch, a batch takes {b}" for t, n, b in short
  )
  fix = f"use train.seqs_per_task={fits} or less" if fits >= 2 else "use more data"
  raise DataError(
    f"train.seqs_per_task={s.seqs_per_task} puts more examples of a task in each batch than "
    f"it has ({sets}): every batch would repeat examples; {fix} (or raise config.data_limit "
    "or train.epoch_examples)"
  )


def steps_per_epoch(s: Schedule) -> int:
  """P = Σ_t B_t: the steps of one epoch of a one-task schedule."""
  return int(batches_per_epoch(s).sum())


def num_epochs(s: Schedule) -> int:
  """E: the epochs train.steps covers, the last one possibly partial."""
  return -(-s.steps // steps_per_epoch(s))


def annealing_alpha(epoch: int, epochs: int) -> float:
  """α = 1 − 0.8 e / (E − 1) for epoch e = 0..E−1: proportional sampling at first, nearly
  uniform (α = 0.2) in the last epoch; α = 1 when the run is a single epoch."""
  return 1.0 - 0.8 * epoch / (epochs - 1) if epochs > 1 else 1.0


def task_probabilities(s: Schedule, epoch: int) -> np.ndarray:
  """p_t ∝ B_t^α of a sampled schedule in `epoch` (0-based)."""
  alpha = annealing_alpha(epoch, num_epochs(s)) if s.kind == "annealed" else _FIXED_ALPHA[s.kind]
  weights = batches_per_epoch(s).astype(np.float64) ** alpha
  return weights / weights.sum()


@functools.lru_cache(maxsize=16)
def epoch_tasks(s: Schedule, epoch: int) -> np.ndarray:
  """The task index of each of the P steps of `epoch` (one-task schedules; read-only, cached)."""
  batches = batches_per_epoch(s)
  num_tasks, steps = len(batches), int(batches.sum())
  if s.kind == "sequential":
    tasks = np.repeat(np.arange(num_tasks), batches)
  elif s.kind == "round_robin":
    tasks = (epoch * steps + np.arange(steps)) % num_tasks
  else:
    rng = np.random.default_rng([s.seed, len(s.names) + 1, epoch])
    tasks = rng.choice(num_tasks, size=steps, p=task_probabilities(s, epoch))
  tasks.setflags(write=False)
  return tasks


@functools.lru_cache(maxsize=4096)
def _epoch_counts(s: Schedule, epoch: int) -> np.ndarray:
  return np.bincount(epoch_tasks(s, epoch), minlength=len(s.epoch_sizes))


def stream_positions(s: Schedule, step: int) -> tuple[int, ...]:
  """Per task (task-axis order), the number of the batch its stream is at when `step` begins:
  the batch the next step that trains the task draws. `all_tasks`: `step` for every task;
  a one-task schedule: the number of earlier steps that trained the task."""
  if not s.one_task:
    return (step,) * len(s.epoch_sizes)
  epoch, offset = divmod(step, steps_per_epoch(s))
  counts = np.bincount(epoch_tasks(s, epoch)[:offset], minlength=len(s.epoch_sizes))
  for e in range(epoch):
    counts = counts + _epoch_counts(s, e)
  return tuple(int(c) for c in counts)


def step_task(s: Schedule, step: int) -> tuple[int, int]:
  """(task index, its batch number) of `step` in a one-task schedule; the batch number is
  the number of earlier steps that trained the task."""
  epoch, offset = divmod(step, steps_per_epoch(s))
  task = int(epoch_tasks(s, epoch)[offset])
  return task, stream_positions(s, step)[task]


def train_batch(
  datasets: list[batching.Encoded], step: int, s: Schedule, buckets: tuple[int, ...], plan=None
) -> dict[str, np.ndarray]:
  """The batch of `step`: [T, S, ...] for `all_tasks`; else one task's [1, S, ...] plus
  "task", its int32 index (a traced argument of the jitted step, so no per-task compile).
  Either way the length is the smallest bucket that fits the batch's longest sequence;
  with a `plan` (`mtl_jax.data.packing.PackPlan`) the token arrays are then packed."""
  if not s.one_task:
    return _draw(s, datasets, step, s.epoch_sizes, buckets, plan)
  task, number = step_task(s, step)
  batch = _draw(s, [datasets[task]], number, (s.epoch_sizes[task],), buckets, plan)
  return {**batch, "task": np.asarray(task, np.int32)}


def every_task_batch(
  datasets: list[batching.Encoded], step: int, s: Schedule, buckets: tuple[int, ...], plan=None
) -> dict[str, np.ndarray]:
  """A batch of every task at `step`, stacked [T, S, ...]: the step's own batch for
  `all_tasks`; under a one-task schedule, each task's next batch (`stream_positions`: the
  step's task gets the step's batch, the others the batch their next step will draw), at
  the smallest bucket that fits them all."""
  if not s.one_task:
    return train_batch(datasets, step, s, buckets, plan)
  return _draw(s, datasets, stream_positions(s, step), s.epoch_sizes, buckets, plan)


def _draw(s: Schedule, datasets, numbers, epoch_sizes, buckets, plan) -> dict[str, np.ndarray]:
  """`batching.train_batch` of batch number(s) `numbers` with the schedule's settings."""
  return batching.train_batch(
    datasets,
    numbers,
    s.seqs_per_task,
    s.seed,
    buckets,
    s.group_steps,
    epoch_sizes,
    plan,
    s.balance_steps,
    len(s.names),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Batches:
  """A run's training batches by step (built from a config by `train.train_batches`)."""

  datasets: list[batching.Encoded]  # The training sets, TASKS order.
  schedule: Schedule
  buckets: tuple[int, ...]
  plan: packing.PackPlan | None = None

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """The batch the trainer draws at `step` (`train_batch`)."""
    return train_batch(self.datasets, step, self.schedule, self.buckets, self.plan)

  def every_task(self, step: int) -> dict[str, np.ndarray]:
    """Every task's batch at `step` (`every_task_batch`), for comparing their gradients."""
    return every_task_batch(self.datasets, step, self.schedule, self.buckets, self.plan)


def describe(s: Schedule) -> str:
  """One line for the log: the kind, the per-epoch sizes and, for one-task kinds, the epochs."""
  sizes = ", ".join(f"{t} {n}" for t, n in zip(s.names, s.epoch_sizes))
  if not s.one_task:
    return f"schedule all_tasks: one batch of every task per step; examples per epoch: {sizes}"
  return (
    f"schedule {s.kind}: one task per step, {steps_per_epoch(s)} steps per epoch "
    f"(batches per epoch: {', '.join(f'{t} {b}' for t, b in zip(s.names, batches_per_epoch(s)))}; "
    f"examples per epoch: {sizes}), {num_epochs(s)} epochs in {s.steps} steps"
  )
