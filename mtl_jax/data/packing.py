"""Sequence packing: a task's padded [S, L0] batch -> [R, L] rows holding several sequences.

Why: sentences are short (16-25 tokens on average) and a step runs at the length bucket of
its longest sequence, so about half of every unpacked step's encoder work is padding.
Packed, each row holds several sequences one after the other, each with its own segment id
(1, 2, ... within the row; 0 = padding), so the encoder can be kept exact: attention is
block-diagonal per segment (`segment_ids`), positions restart at 0 in every segment
(`position_ids`), token types stay per segment, and pooling reads each sequence back out of
its row (`seq_row`, `seq_start`, `seq_len`, in the unpacked batch's sequence order, so the
heads, labels and weights see exactly the unpacked layout).

The plan (`PackPlan`) keeps the shapes few and static, because XLA compiles one step per
shape and every lane of a step must share it (the [K, R, L] stack that `vmap` runs over):
  L  of the `plan.lengths` that fit the step's longest sequence, the one whose R (below)
     computes the fewest tokens R * L;
  R  the most rows any lane needs (first-fit decreasing), rounded up to the next value of a
     ladder of row counts (1, 2, ..., 8, then even counts up to 16, multiples of 4 up to
     32, of 8 up to 64, ...), and to a multiple of the device count, so the rows split
     evenly over data-parallel devices.
  K  one lane per task, or with `plan.slots` several for the tasks with the most tokens:
     an SST step holds ~1.6x the tokens of a pair task's, and with one lane each every
     task would compute as many rows as SST. Slots split a task's examples into lanes of
     about equal tokens (`batching.train_batch`); the step sums a task's lanes back into
     its gradient (`mtl_jax.step`). `choose_slots` picks the split per run, by packing the
     run's first batches under a few candidates.
With token balancing (`train.token_balancing`, `batching.train_indices`) every step holds
about the same tokens, so nearly all steps take one shape.
Everything is a pure function of the unpacked batch, which is itself a function of (seed,
step), and of the training data: resuming replays exactly the same packed batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

PACKING_KEYS = ("position_ids", "segment_ids", "seq_row", "seq_start", "seq_len")


@dataclasses.dataclass(frozen=True)
class PackPlan:
  """How batches are packed: the allowed row lengths, and the row-count multiple."""

  lengths: tuple[int, ...] = (64, 128)  # Row lengths; the largest must fit any sequence.
  devices: int = 1  # Rows are a multiple of this (data parallelism splits the rows).
  slots: tuple[int, ...] = ()  # Lanes per task of an all-tasks step; () = one each.

  def shape(self, lengths: list[np.ndarray]) -> tuple[int, int]:
    """(L, R) for tasks whose sequences have these lengths: of the row lengths that fit the
    longest sequence, the one whose rounded row count R computes the fewest tokens R * L
    (the shorter on a tie: cheaper attention)."""
    longest = max(int(np.max(x)) for x in lengths)
    fits = [n for n in sorted(self.lengths) if n >= longest]
    if not fits:
      raise ValueError(
        f"a {longest}-token sequence does not fit the packed row lengths {self.lengths}"
      )
    best = None
    for n in fits:
      rows = round_rows(max(len(first_fit_decreasing(x, n)) for x in lengths), self.devices)
      if best is None or rows * n < best[0] * best[1]:
        best = (rows, n)
    return best[1], best[0]


# Packed rows are at least this long when the buckets allow: a 64-token row holds about four
# typical sentences, so its unused end is a small share; shorter rows waste more of theirs.
MIN_ROW_LENGTH = 64


ROW_LENGTH_STEP = 16  # Between MIN_ROW_LENGTH and the largest bucket, row lengths step by this.


def row_lengths(buckets: tuple[int, ...]) -> tuple[int, ...]:
  """The packed row lengths of a run with these length buckets: every multiple of
  ROW_LENGTH_STEP from MIN_ROW_LENGTH up to the largest bucket, and that bucket (alone,
  when it is shorter). Finer than the buckets: a lane's R x L can then be close to its
  tokens (7 x 80 where 6 x 96 was the nearest), and it is not padding per sequence."""
  top = max(buckets)
  steps = range(MIN_ROW_LENGTH, top, ROW_LENGTH_STEP)
  return (*steps, top)


def round_rows(needed: int, devices: int = 1) -> int:
  """The smallest ladder value >= needed that is a multiple of `devices`. The ladder: every
  count up to 8 (slots hold few rows each, where one row is 1/8 or more), steps of 2 up to
  16, of 4 up to 32, then of max(4, 2^(k-2)) in (2^k, 2^(k+1)] (8 up to 64, 16 up to
  128, ...): at most ~12% of rounding above 32 rows, and few distinct counts."""
  needed = max(needed, 1)
  if needed <= 8:
    step = 1
  elif needed <= 16:
    step = 2
  elif needed <= 32:
    step = 4
  else:
    step = 2 ** (math.ceil(math.log2(needed)) - 3)
  step = step * devices // math.gcd(step, devices)
  return -(-needed // step) * step


def first_fit_decreasing(lengths: np.ndarray, row_length: int) -> list[list[int]]:
  """Sequence indices per row: longest first, each into the first row with room.
  Deterministic (stable sort), so a batch always packs the same way."""
  rows: list[list[int]] = []
  room: list[int] = []
  for i in np.argsort(-np.asarray(lengths), kind="stable"):
    n = int(lengths[i])
    if n == 0:
      continue
    for r, free in enumerate(room):
      if n <= free:
        rows[r].append(int(i))
        room[r] -= n
        break
    else:
      rows.append([int(i)])
      room.append(row_length - n)
  return rows


def pack(batch: dict[str, np.ndarray], rows: int, row_length: int) -> dict[str, np.ndarray]:
  """One task's unpacked batch ([S, L0] token arrays, labels/weights [S]) -> packed.

  Returns input_ids, attention_mask (1 on real tokens), token_type_ids, position_ids,
  segment_ids [rows, row_length]; seq_row, seq_start, seq_len [S] (a sequence's row, first
  column and length; 0, 0, 0 for an empty slot) and labels, weights [S] unchanged.
  """
  lengths = batch["attention_mask"].sum(-1)
  placement = first_fit_decreasing(lengths, row_length)
  if len(placement) > rows:
    raise ValueError(f"{len(placement)} rows needed, {rows} given")
  shape = (rows, row_length)
  out = {
    k: np.zeros(shape, np.int32)
    for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids")
  }
  s = len(lengths)
  seq_row, seq_start, seq_len = (np.zeros(s, np.int32) for _ in range(3))
  for r, members in enumerate(placement):
    col = 0
    for segment, i in enumerate(sorted(members), start=1):  # Batch order within a row.
      n = int(lengths[i])
      cols = slice(col, col + n)
      out["input_ids"][r, cols] = batch["input_ids"][i, :n]
      out["token_type_ids"][r, cols] = batch["token_type_ids"][i, :n]
      out["attention_mask"][r, cols] = 1
      out["position_ids"][r, cols] = np.arange(n)
      out["segment_ids"][r, cols] = segment
      seq_row[i], seq_start[i], seq_len[i] = r, col, n
      col += n
  return {
    **out,
    "seq_row": seq_row,
    "seq_start": seq_start,
    "seq_len": seq_len,
    "labels": batch["labels"],
    "weights": batch["weights"],
  }


# The slot split is chosen on this many of a run's first steps: enough to see its mix of
# lengths, and well under a second of packing per candidate.
SLOT_SAMPLE_STEPS = 16
MAX_SLOTS = 4  # Per task.


def slot_candidates(tokens: Sequence[float], most: Sequence[int] = ()) -> list[tuple[int, ...]]:
  """Slots per task to try, fewest lanes first: one each, then about k times each task's
  share of tokens over the smallest task's (k = 1, 2, 3; at most MAX_SLOTS per task, or
  `most[t]` for task t: 1 keeps a task whose loss ranks a batch's examples against each
  other in one lane). `tokens`: each task's mean tokens per step."""
  caps = tuple(most) or (MAX_SLOTS,) * len(tokens)
  smallest = max(min(tokens), 1e-9)
  out = [(1,) * len(tokens)]
  for k in (1, 2, 3):
    slots = tuple(min(cap, max(1, round(k * t / smallest))) for t, cap in zip(tokens, caps))
    if slots not in out:
      out.append(slots)
  return out


def choose_slots(
  plan: PackPlan,
  tokens: Sequence[float],
  computed: Callable[[PackPlan], int],
  most: Sequence[int] = (),
) -> PackPlan:
  """`plan` with the candidate slots (`slot_candidates`, at most `most` per task) whose
  batches compute the fewest tokens, `computed(plan)` (the fewest lanes on a tie: fewer
  per-lane gradients)."""
  plans = [dataclasses.replace(plan, slots=s) for s in slot_candidates(tokens, most)]
  costs = [computed(p) for p in plans]
  return plans[costs.index(min(costs))]


def pack_stack(batch: dict[str, np.ndarray], plan: PackPlan) -> dict[str, np.ndarray]:
  """A [K, S, L0] stack of unpacked lanes (one per task, or slots) -> a [K, R, L] packed
  stack, one (R, L) for all lanes (the plan's; see the module docstring). Other keys (a
  one-task batch's "task", the slots' "slot_task" and "slot_share") pass through."""
  tasks = batch["input_ids"].shape[0]
  one = lambda t: {
    k: batch[k][t] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")
  }
  length, rows = plan.shape([one(t)["attention_mask"].sum(-1) for t in range(tasks)])
  packed = [pack(one(t), rows, length) for t in range(tasks)]
  out = {k: np.stack([p[k] for p in packed]) for k in packed[0]}
  out.update({k: v for k, v in batch.items() if k not in out})
  return out


def pack_one(batch: dict[str, np.ndarray], plan: PackPlan) -> dict[str, np.ndarray]:
  """One task's [S, L0] batch (evaluation) -> packed with the plan's shapes."""
  stacked = pack_stack({k: v[None] for k, v in batch.items()}, plan)
  return {k: v[0] for k, v in stacked.items()}


def is_packed(batch: dict) -> bool:
  return "segment_ids" in batch


def num_sequences(batch: dict) -> int:
  """Sequences (not rows) the batch holds, packed or not."""
  if is_packed(batch):
    return int((np.asarray(batch["seq_len"]) > 0).sum())
  return int(np.asarray(batch["attention_mask"])[..., 0].sum())
