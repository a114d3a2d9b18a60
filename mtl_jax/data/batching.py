"""Token ids -> fixed-shape batches: one [T, S, L] stack per train step, bucketed lengths.

Why the shapes look like this:
- Every task contributes the same number S of encoded sequences per step (SST: S
  sentences; Quora, STS: S/2 bi-encoded pairs, first sentences then second sentences, or
  S cross-encoded pairs, one [CLS] s1 [SEP] s2 [SEP] sequence each), so the three task
  batches stack on a leading task axis and one `vmap`ped gradient covers them all with
  no wasted compute.
- The length L is the smallest bucket that fits the step's longest sequence, so XLA
  compiles one step per bucket (a handful) while short batches don't pay for long ones.
- Length grouping: each task's examples for a group of K consecutive steps are sorted by
  length and cut into K batches, and the K steps take them in one shuffled order shared by
  all tasks. Short batches of every task then meet in the same step, so most steps run
  at a short bucket (the step's length is the longest of any task); each example is
  still seen once per epoch.
- Token balancing (the packed default): the examples of a group of K consecutive batches
  are dealt into K batches of about equal tokens instead. A packed step's cost is its
  fullest lane's rows, so steps of equal tokens pack into one shape with little room left
  over (`mtl_jax.data.packing`); again each example is seen once per epoch.
- Example order is a pure function of (seed, task, epoch), and a step's examples of the
  step number alone: resuming at step k replays exactly the batches an uninterrupted
  run would have seen.
- Which tasks a step trains is `mtl_jax.data.schedules`' business: by default every task
  (`train_batch`), else one, whose batch number in its own stream the schedule derives.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq

import numpy as np

from mtl_jax import tasks
from mtl_jax.data import packing
from mtl_jax.data.files import TaskSplit


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One task split, tokenized (ragged, unpadded).

  A single sentence or a bi-encoded pair is `first` (and `second`), each [CLS] s [SEP];
  a cross-encoded pair is `first` = [CLS] s1 [SEP] s2 [SEP] with its `token_types`.
  """

  task: str
  split: str
  ids: list[str]
  first: list[np.ndarray]  # Token ids of sentence 1, or of the whole cross-encoded pair.
  second: list[np.ndarray] | None  # Of sentence 2, for bi-encoded pairs.
  labels: np.ndarray | None
  token_types: list[np.ndarray] | None = None  # Of `first`, for cross-encoded pairs.
  spec: tasks.TaskSpec | None = None  # Its task (None: the CS224N task called `task`).

  @property
  def task_spec(self) -> tasks.TaskSpec:
    """Its task's spec: the run's, or the CS224N table's for data made without one."""
    return self.spec if self.spec is not None else tasks.get(self.task)

  def __post_init__(self):
    if self.second is not None and self.token_types is not None:
      raise ValueError("a pair is either bi-encoded (second) or cross-encoded (token_types)")

  def __len__(self) -> int:
    return len(self.first)

  @property
  def is_bi_pair(self) -> bool:
    """Two sequences per example: the batch holds half as many examples as rows."""
    return self.second is not None

  @property
  def is_cross_pair(self) -> bool:
    return self.token_types is not None

  @functools.cached_property
  def lengths(self) -> np.ndarray:
    """Per example, the length of its longest sequence."""
    lengths = np.array([len(s) for s in self.first])
    if self.is_bi_pair:
      lengths = np.maximum(lengths, [len(s) for s in self.second])
    return lengths

  @functools.cached_property
  def tokens(self) -> np.ndarray:
    """Per example, the tokens of all its sequences (what it costs the encoder)."""
    tokens = np.array([len(s) for s in self.first])
    if self.is_bi_pair:
      tokens = tokens + [len(s) for s in self.second]
    return tokens


def encode(tokenizer, split: TaskSplit, max_length: int, cross: bool = False) -> Encoded:
  """Tokenizes a split, truncating every sequence to max_length tokens.

  Each sentence alone ([CLS] s [SEP]); with `cross`, each pair of a pair task as one
  sequence [CLS] s1 [SEP] s2 [SEP] as the tokenizer encodes pairs: token type 0 up to the
  first [SEP], 1 after it, the longer sentence trimmed first when the pair is too long
  ("longest_first"), so both sentences keep a share of the max_length tokens.
  """
  if cross and split.sentences2 is not None:
    out = tokenizer(
      list(split.sentences1),
      list(split.sentences2),
      truncation="longest_first",
      max_length=max_length,
    )
    return Encoded(
      split.task,
      split.split,
      list(split.ids),
      _int32(out["input_ids"]),
      None,
      split.labels,
      _int32(out["token_type_ids"]),
      split.spec,
    )

  def ids(sentences):
    return _int32(tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"])

  second = ids(split.sentences2) if split.sentences2 is not None else None
  return Encoded(
    split.task,
    split.split,
    list(split.ids),
    ids(split.sentences1),
    second,
    split.labels,
    spec=split.spec,
  )


def _int32(rows) -> list[np.ndarray]:
  return [np.asarray(x, np.int32) for x in rows]


def bucket_length(n: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket >= n (sequences were truncated to the largest bucket)."""
  for b in sorted(buckets):
    if n <= b:
      return b
  return max(buckets)


def examples_per_batch(data: Encoded, seqs_per_batch: int) -> int:
  return seqs_per_batch // 2 if data.is_bi_pair else seqs_per_batch


def sequences(data: Encoded, indices: np.ndarray) -> list[np.ndarray]:
  """The sequences of these examples in batch order: firsts, then seconds for bi pairs."""
  seqs = [data.first[i] for i in indices]
  if data.is_bi_pair:
    seqs += [data.second[i] for i in indices]
  return seqs


def make_batch(
  data: Encoded, indices: np.ndarray, seqs_per_batch: int, length: int
) -> dict[str, np.ndarray]:
  """Pads the examples `indices` into [S, length] arrays plus labels/weights [S].

  Rows beyond the examples given (a short final eval batch) are padding with weight 0.
  Token types are 0 but for cross-encoded pairs (1 on s2 [SEP]).
  """
  n_max = examples_per_batch(data, seqs_per_batch)
  if len(indices) > n_max:
    raise ValueError(f"{len(indices)} {data.task} examples do not fit in {seqs_per_batch} rows")
  input_ids = np.zeros((seqs_per_batch, length), np.int32)  # BERT's [PAD] id is 0.
  attention_mask = np.zeros((seqs_per_batch, length), np.int32)
  rows = list(range(len(indices)))
  if data.is_bi_pair:  # Second sentences start at row S/2, whatever the number of pairs.
    rows += [n_max + r for r in range(len(indices))]
  for row, seq in zip(rows, sequences(data, indices)):
    seq = seq[:length]
    input_ids[row, : len(seq)] = seq
    attention_mask[row, : len(seq)] = 1
  token_type_ids = np.zeros_like(input_ids)
  if data.is_cross_pair:
    for row, i in enumerate(indices):
      types = data.token_types[i][:length]
      token_type_ids[row, : len(types)] = types
  labels = np.zeros(seqs_per_batch, np.float32)
  weights = np.zeros(seqs_per_batch, np.float32)
  if data.labels is not None:
    labels[: len(indices)] = data.labels[indices]
  weights[: len(indices)] = 1.0
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "token_type_ids": token_type_ids,
    "labels": labels,
    "weights": weights,
  }


@functools.lru_cache(maxsize=16)
def _epoch_order(seed: int, task_index: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, task_index, epoch]).permutation(n)


def _stream(data: Encoded, start: int, count: int, seed: int, epoch_size: int = 0) -> np.ndarray:
  """Positions [start, start + count) of the task's endless stream of epochs.

  Epoch e is the first `epoch_size` examples (0, or more than the set: all of them) of the
  (seed, task, e) shuffle: capping the epoch undersamples the task with a fresh random
  subset every epoch, and leaves the uncapped stream exactly as it was.
  """
  size = min(epoch_size, len(data)) if epoch_size else len(data)
  epochs, offsets = np.divmod(np.arange(start, start + count), size)
  out = np.empty(count, np.int64)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = _epoch_order(seed, data.task_spec.index, int(epoch), len(data))[offsets[here]]
  return out


def train_indices(
  data: Encoded,
  step: int,
  count: int,
  seed: int,
  group_steps: int = 0,
  epoch_size: int = 0,
  balance_steps: int = 0,
  num_tasks: int = len(tasks.TASKS),
) -> np.ndarray:
  """Example indices of the task's batch number `step` (the train step, when every step
  has a batch of every task); see the module docstring for length grouping (`group_steps`)
  and token balancing (`balance_steps`; at most one of the two > 1), `_stream` for
  `epoch_size`."""
  if balance_steps > 1:
    group, position = divmod(step, balance_steps)
    pool = _stream(data, group * balance_steps * count, balance_steps * count, seed, epoch_size)
    return pool[deal_by_tokens(data.tokens[pool], balance_steps)[position]]
  if group_steps <= 1:
    return _stream(data, step * count, count, seed, epoch_size)
  group, position = divmod(step, group_steps)
  pool = _stream(data, group * group_steps * count, group_steps * count, seed, epoch_size)
  by_length = pool[np.argsort(data.lengths[pool], kind="stable")].reshape(group_steps, count)
  # One order of the group's batches for every task, so that their lengths line up.
  rank = np.random.default_rng([seed, num_tasks, group]).permutation(group_steps)[position]
  return by_length[rank]


def deal_by_tokens(tokens: np.ndarray, parts: int, equal_sizes: bool = True) -> list[np.ndarray]:
  """Positions 0..n-1 dealt into `parts` sorted groups of about equal total `tokens`: the
  most tokens first, each to the group with the fewest so far (among those with room, when
  `equal_sizes`: n/parts positions each, n a multiple of `parts`). Deterministic."""
  size = len(tokens) // parts if equal_sizes else len(tokens)
  groups: list[list[int]] = [[] for _ in range(parts)]
  open_groups = [(0, g) for g in range(parts)]  # (tokens so far, group): a heap, ties by g.
  for i in np.argsort(-np.asarray(tokens), kind="stable"):
    load, g = heapq.heappop(open_groups)
    groups[g].append(int(i))
    if len(groups[g]) < size:
      heapq.heappush(open_groups, (load + int(tokens[i]), g))
  return [np.sort(np.asarray(g, np.int64)) for g in groups]


def train_batch(
  datasets: list[Encoded],
  step: int | tuple[int, ...],
  seqs_per_task: int,
  seed: int,
  buckets: tuple[int, ...],
  group_steps: int = 0,
  epoch_sizes: tuple[int, ...] = (),
  plan: packing.PackPlan | None = None,
  balance_steps: int = 0,
  num_tasks: int = len(tasks.TASKS),
) -> dict[str, np.ndarray]:
  """The step's batch: every task's arrays stacked on a leading task axis [T, S, ...].

  `step`: the batch number in every dataset's stream, or one per dataset (a one-task
  schedule's streams advance apart: `schedules.every_task_batch`).
  `epoch_sizes`: per dataset, the examples of one of its epochs (0 = all; () = all for all).
  `plan`: pack the token arrays into [T, R, L] rows (`mtl_jax.data.packing`); the same
  examples, labels and weights [T, S] either way. A plan with `slots` (one entry per
  dataset, some > 1) splits task t's examples over slots[t] lanes of about equal tokens
  (`split_examples`): [K, R, L] with K = sum(slots), plus "slot_task" [K] (each lane's
  position in `datasets`) and "slot_share" [K] (its share of the task's examples, which
  scales its mean loss so that the task's lanes sum to the task's mean loss).
  `num_tasks`: the run's T (length groups are ordered by [seed, T, group]).
  """
  sizes = epoch_sizes or (0,) * len(datasets)
  numbers = (step,) * len(datasets) if np.ndim(step) == 0 else tuple(step)
  chosen = [
    train_indices(
      d,
      int(n),
      examples_per_batch(d, seqs_per_task),
      seed,
      group_steps,
      size,
      balance_steps,
      num_tasks,
    )
    for d, n, size in zip(datasets, numbers, sizes, strict=True)
  ]
  length = bucket_length(
    max(int(d.lengths[idx].max()) for d, idx in zip(datasets, chosen)), buckets
  )
  slots = plan.slots if plan is not None and len(plan.slots) == len(datasets) else ()
  lanes, lane_task, share = [], [], []
  for t, (d, idx) in enumerate(zip(datasets, chosen)):
    for part in split_examples(d, idx, slots[t]) if slots else [idx]:
      lanes.append(make_batch(d, part, seqs_per_task, length))
      lane_task.append(t)
      share.append(len(part) / max(len(idx), 1))
  stack = {k: np.stack([b[k] for b in lanes]) for k in lanes[0]}
  if len(lanes) > len(datasets):  # Slots: some task over several lanes.
    stack["slot_task"] = np.asarray(lane_task, np.int32)
    stack["slot_share"] = np.asarray(share, np.float32)
  return stack if plan is None else packing.pack_stack(stack, plan)


def split_examples(data: Encoded, indices: np.ndarray, parts: int) -> list[np.ndarray]:
  """`indices` cut into `parts` groups of about equal tokens (`deal_by_tokens`, any sizes),
  each in batch order."""
  return [indices[g] for g in deal_by_tokens(data.tokens[indices], parts, equal_sizes=False)]


def eval_batches(
  data: Encoded, seqs_per_batch: int, buckets: tuple[int, ...], plan: packing.PackPlan | None = None
):
  """Yields (example indices, batch) over a whole split, sorted by length to cut padding;
  with `plan`, packed (`mtl_jax.data.packing`)."""
  lengths = data.lengths
  order = np.argsort(lengths, kind="stable")
  n = examples_per_batch(data, seqs_per_batch)
  for start in range(0, len(order), n):
    idx = order[start : start + n]
    length = bucket_length(max(lengths[i] for i in idx), buckets)
    batch = make_batch(data, idx, seqs_per_batch, length)
    yield idx, batch if plan is None else packing.pack_one(batch, plan)
