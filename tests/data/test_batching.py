"""mtl_jax.data.batching: bucketing, batch layout, the train order and eval coverage.

Datasets are synthetic `Encoded` objects whose token ids encode (example, sentence), so
every row of a batch can be traced back to the example it must hold.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_data

from mtl_jax.data import batching

BUCKETS = (8, 16, 32)


# --------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------


def test_encode_pairs_with_tiny_tokenizer(tiny_bert_dir):
  from mtl_jax.data.files import TaskSplit
  from mtl_jax.models import hf_io

  tok = hf_io.load_tokenizer(tiny_bert_dir)
  long = "the cat sat on the mat and the dog sat on the mat"
  split = TaskSplit(
    "sts",
    "dev",
    "x.csv",
    ["a", "b"],
    ["a cat", long],
    ["the dog", "good"],
    np.array([1.0, 4.5], np.float32),
    [],
  )
  enc = batching.encode(tok, split, max_length=8)
  assert enc.is_bi_pair and len(enc) == 2 and enc.ids == ["a", "b"]
  np.testing.assert_array_equal(enc.labels, [1.0, 4.5])
  cls, sep = tok.cls_token_id, tok.sep_token_id
  for seqs in (enc.first, enc.second):
    for x in seqs:  # Each sentence alone: [CLS] s [SEP], as int32.
      assert x.dtype == np.int32 and x[0] == cls and x[-1] == sep
      assert (x[1:-1] != sep).all()
  assert len(enc.first[1]) == 8  # Truncated to max_length.
  assert len(enc.first[0]) == 4 and len(enc.second[1]) == 3
  single = TaskSplit("sst", "test", "y.csv", ["c"], ["very good"], None, None, [])
  enc = batching.encode(tok, single, max_length=8)
  assert not enc.is_bi_pair and enc.second is None and enc.labels is None


# --------------------------------------------------------------------------
# bucket_length
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n, want", [(1, 8), (7, 8), (8, 8), (9, 16), (16, 16), (17, 32), (32, 32)])
def test_bucket_length_smallest_fitting(n, want):
  assert batching.bucket_length(n, BUCKETS) == want
  # Order of the bucket tuple must not matter.
  assert batching.bucket_length(n, (32, 8, 16)) == want


def test_bucket_length_beyond_largest_is_largest():
  assert batching.bucket_length(100, BUCKETS) == 32


# --------------------------------------------------------------------------
# make_batch
# --------------------------------------------------------------------------


def _check_row(batch, row, seq, length):
  n = min(len(seq), length)
  np.testing.assert_array_equal(batch["input_ids"][row, :n], seq[:n])
  assert (batch["input_ids"][row, n:] == 0).all()
  np.testing.assert_array_equal(
    batch["attention_mask"][row], (np.arange(length) < n).astype(np.int32)
  )


def _check_empty_row(batch, row):
  assert (batch["input_ids"][row] == 0).all()
  assert (batch["attention_mask"][row] == 0).all()
  assert batch["weights"][row] == 0


@pytest.mark.parametrize("task", ["quora", "sts"])
def test_make_batch_pair_layout(task):
  data = make_data(task, 6, max_len=12)
  s, length = 8, 16
  idx = np.array([4, 1, 3])  # 3 pairs in a batch with room for 4.
  b = batching.make_batch(data, idx, s, length)
  assert set(b) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "weights"}
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    assert b[k].shape == (s, length), k
    assert b[k].dtype == np.int32, k
  assert b["labels"].shape == b["weights"].shape == (s,)
  for r, i in enumerate(idx):
    _check_row(b, r, data.first[i], length)  # First sentences: rows [0, S/2).
    _check_row(b, s // 2 + r, data.second[i], length)  # Second: rows [S/2, S).
  _check_empty_row(b, 3)
  _check_empty_row(b, 7)
  np.testing.assert_allclose(b["labels"][:3], data.labels[idx])
  np.testing.assert_array_equal(b["weights"][:3], 1.0)
  assert (b["weights"][3:] == 0).all() and (b["labels"][3:] == 0).all()
  assert (b["token_type_ids"] == 0).all()
  # attention_mask sums are exactly the sequence lengths.
  np.testing.assert_array_equal(b["attention_mask"][:3].sum(1), [len(data.first[i]) for i in idx])
  np.testing.assert_array_equal(b["attention_mask"][4:7].sum(1), [len(data.second[i]) for i in idx])


def test_make_batch_single_sentence_layout():
  data = make_data("sst", 10, max_len=12)
  s, length = 6, 16
  idx = np.array([9, 0, 5, 2])
  b = batching.make_batch(data, idx, s, length)
  for r, i in enumerate(idx):
    _check_row(b, r, data.first[i], length)
  _check_empty_row(b, 4)
  _check_empty_row(b, 5)
  np.testing.assert_array_equal(b["labels"][:4], data.labels[idx].astype(np.float32))
  np.testing.assert_array_equal(b["weights"], [1, 1, 1, 1, 0, 0])


def test_make_batch_full_pair_batch_has_no_padding_rows():
  data = make_data("sts", 5, max_len=8)
  b = batching.make_batch(data, np.array([0, 1]), 4, 8)
  assert (b["attention_mask"].sum(1) > 0).all()
  np.testing.assert_array_equal(b["weights"][:2], 1.0)


def test_make_batch_truncates_to_length():
  data = make_data("sst", 3, max_len=30)
  long_i = int(np.argmax([len(x) for x in data.first]))
  assert len(data.first[long_i]) > 8
  b = batching.make_batch(data, np.array([long_i]), 2, 8)
  np.testing.assert_array_equal(b["input_ids"][0], data.first[long_i][:8])
  assert b["attention_mask"][0].sum() == 8


def test_make_batch_without_labels():
  data = make_data("sst", 4, labels=False, split="test")
  b = batching.make_batch(data, np.array([0, 1]), 4, 32)
  assert (b["labels"] == 0).all()
  np.testing.assert_array_equal(b["weights"], [1, 1, 0, 0])


def test_make_batch_too_many_examples_raises():
  sst = make_data("sst", 10)
  batching.make_batch(sst, np.arange(4), 4, 32)  # Exactly full is fine.
  with pytest.raises(ValueError):
    batching.make_batch(sst, np.arange(5), 4, 32)
  quora = make_data("quora", 10)
  batching.make_batch(quora, np.arange(2), 4, 32)
  with pytest.raises(ValueError):
    batching.make_batch(quora, np.arange(3), 4, 32)  # 3 pairs need 6 rows.


# --------------------------------------------------------------------------
# train_indices
# --------------------------------------------------------------------------


def _clear_cache():
  clear = getattr(getattr(batching, "_epoch_order", None), "cache_clear", None)
  if clear is not None:
    clear()


def _run(data, steps, count, seed):
  return np.concatenate([batching.train_indices(data, k, count, seed) for k in range(steps)])


@pytest.mark.parametrize(
  "task, n, count", [("sst", 12, 3), ("quora", 10, 4), ("sts", 7, 5), ("sst", 3, 8)]
)  # Fewer examples than a batch.
def test_train_indices_each_example_once_per_epoch(task, n, count):
  data = make_data(task, n)
  epochs = 3
  steps = -(-epochs * n // count)
  seen = _run(data, steps, count, seed=0)
  assert len(seen) == steps * count
  for e in range(epochs):
    epoch = seen[e * n : (e + 1) * n]
    assert sorted(epoch.tolist()) == list(range(n)), f"epoch {e}: {epoch}"
  assert seen.dtype.kind == "i"


def test_train_indices_deterministic_and_resumable():
  data = make_data("quora", 23)
  count = 4
  sequential = [batching.train_indices(data, k, count, 7) for k in range(20)]
  _clear_cache()
  # Step k alone (as after a resume), and in reverse order, gives the same indices.
  for k in (13, 5, 19, 0):
    np.testing.assert_array_equal(batching.train_indices(data, k, count, 7), sequential[k])
  _clear_cache()
  backwards = [batching.train_indices(data, k, count, 7) for k in reversed(range(20))][::-1]
  for a, b in zip(sequential, backwards):
    np.testing.assert_array_equal(a, b)


def test_train_indices_order_independent_of_count():
  """The example stream is a function of (seed, task, epoch): batch size only slices it."""
  data = make_data("sst", 11)
  np.testing.assert_array_equal(_run(data, 12, 2, seed=3)[:24], _run(data, 6, 4, seed=3)[:24])


def test_train_indices_differ_across_seeds_and_epochs():
  n = 40
  data = make_data("sts", n)
  seed0 = _run(data, 2, n, seed=0)
  seed1 = _run(data, 2, n, seed=1)
  assert not np.array_equal(seed0[:n], seed1[:n])
  assert not np.array_equal(seed0[:n], seed0[n:])  # Fresh shuffle each epoch.
  assert not np.array_equal(seed0[:n], np.arange(n))  # Actually shuffled.


# --------------------------------------------------------------------------
# train_batch
# --------------------------------------------------------------------------


def _datasets(max_len=30):
  return [
    make_data("sst", 7, seed=1, max_len=max_len),
    make_data("quora", 5, seed=2, max_len=max_len),
    make_data("sts", 9, seed=3, max_len=max_len),
  ]


@pytest.mark.parametrize("step", [0, 1, 4])
def test_train_batch_shapes_and_contents(step):
  datasets = _datasets()
  s, seed = 4, 5
  b = batching.train_batch(datasets, step, s, seed, BUCKETS)
  length = b["input_ids"].shape[-1]
  assert length in BUCKETS
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    assert b[k].shape == (3, s, length), k
  assert b["labels"].shape == b["weights"].shape == (3, s)
  chosen = [batching.train_indices(d, step, s // 2 if d.is_bi_pair else s, seed) for d in datasets]
  longest = max(
    len(x)
    for d, idx in zip(datasets, chosen)
    for i in idx
    for x in ([d.first[i]] + ([d.second[i]] if d.is_bi_pair else []))
  )
  assert length >= longest
  assert length == min(bk for bk in BUCKETS if bk >= longest)  # Smallest bucket that fits.
  # No row is truncated: each real row's mask sums to its sequence length.
  for t, (d, idx) in enumerate(zip(datasets, chosen)):
    np.testing.assert_array_equal(
      b["attention_mask"][t].sum(1)[: len(idx)], [len(d.first[i]) for i in idx]
    )
    np.testing.assert_array_equal(
      b["input_ids"][t, : len(idx), 1], 1000 + np.asarray(idx)
    )  # Row r holds example idx[r].
    if d.is_bi_pair:
      np.testing.assert_array_equal(
        b["input_ids"][t, s // 2 : s // 2 + len(idx), 1], 2000 + np.asarray(idx)
      )
  # All tasks fill their batches in training: S sentences or S/2 pairs.
  np.testing.assert_array_equal(b["weights"][0], 1.0)
  np.testing.assert_array_equal(b["weights"][1:, : s // 2], 1.0)


def test_train_batch_short_sequences_use_small_bucket():
  b = batching.train_batch(_datasets(max_len=6), 0, 4, 0, BUCKETS)
  assert b["input_ids"].shape[-1] == 8


# --------------------------------------------------------------------------
# eval_batches
# --------------------------------------------------------------------------


@pytest.mark.parametrize("task, n, s", [("sst", 10, 4), ("quora", 11, 4), ("sts", 3, 8)])
def test_eval_batches_cover_every_example_once(task, n, s):
  data = make_data(task, n, seed=n)
  seen = []
  for idx, b in batching.eval_batches(data, s, BUCKETS):
    idx = np.asarray(idx)
    per = s // 2 if data.is_bi_pair else s
    assert 1 <= len(idx) <= per
    length = b["input_ids"].shape[1]
    assert length in BUCKETS and b["input_ids"].shape == (s, length)
    for r, i in enumerate(idx):
      _check_row(b, r, data.first[i], length)
      assert len(data.first[i]) <= length
      if data.is_bi_pair:
        _check_row(b, s // 2 + r, data.second[i], length)
        assert len(data.second[i]) <= length
    np.testing.assert_array_equal(b["weights"][: len(idx)], 1.0)
    assert (b["weights"][len(idx) :] == 0).all()
    seen.extend(idx.tolist())
  assert sorted(seen) == list(range(n))


def test_eval_batches_short_split_uses_small_bucket():
  data = make_data("sst", 5, max_len=5)
  batches = list(batching.eval_batches(data, 8, BUCKETS))
  assert len(batches) == 1
  assert batches[0][1]["input_ids"].shape == (8, 8)


# --------------------------------------------------------------------------
# length grouping
# --------------------------------------------------------------------------


def test_grouped_indices_still_cover_each_example_once_per_epoch():
  data = make_data("sst", 24)
  count, group = 3, 4  # A group of 4 steps = 12 examples = half an epoch.
  seen = np.concatenate([batching.train_indices(data, k, count, 0, group) for k in range(16)])
  for e in range(2):
    assert sorted(seen[e * 24 : (e + 1) * 24].tolist()) == list(range(24))


def test_grouped_batches_hold_similar_lengths_and_align_across_tasks():
  datasets = [make_data("sst", 400, seed=1), make_data("quora", 400, seed=2)]
  count, group = 8, 16
  spreads, ungrouped_spreads, ranks = [], [], []
  for step in range(group):
    idx = [batching.train_indices(d, step, count, 0, group) for d in datasets]
    plain = batching.train_indices(datasets[0], step, count, 0)
    spreads.append(np.ptp(datasets[0].lengths[idx[0]]))
    ungrouped_spreads.append(np.ptp(datasets[0].lengths[plain]))
    ranks.append([np.median(d.lengths[i]) for d, i in zip(datasets, idx)])
  assert np.mean(spreads) < 0.5 * np.mean(ungrouped_spreads)
  # Short batches of one task come with short batches of the other.
  ranks = np.array(ranks)
  assert np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1] > 0.8


# --------------------------------------------------------------------------
# token balancing
# --------------------------------------------------------------------------


def test_deal_by_tokens_by_hand():
  # Most tokens first, each to the lighter group with room: 5->a, 4->b, 3->b (7), 3->a
  # (8), 2->b (9; b full), 1->a (9).
  groups = batching.deal_by_tokens(np.array([5, 1, 4, 2, 3, 3]), 2)
  assert [g.tolist() for g in groups] == [[0, 1, 5], [2, 3, 4]]
  # Any sizes (the slots' split): 5, 4->b, 3->b (7), 3->a (8), 2->b (9), 1->a (9).
  free = batching.deal_by_tokens(np.array([5, 1, 4, 2, 3, 3]), 2, equal_sizes=False)
  assert [g.tolist() for g in free] == [[0, 1, 5], [2, 3, 4]]
  skewed = batching.deal_by_tokens(np.array([9, 1, 1, 1]), 2, equal_sizes=False)
  assert [g.tolist() for g in skewed] == [[0], [1, 2, 3]]  # Sizes follow the tokens.
  assert [g.tolist() for g in batching.deal_by_tokens(np.array([9, 1, 1, 1]), 2)] == [
    [0, 3],
    [1, 2],
  ]


def test_balanced_batches_cover_each_example_once_and_hold_equal_tokens():
  data = make_data("sst", 400, seed=3)
  count, group = 10, 8
  batches = [batching.train_indices(data, k, count, 0, balance_steps=group) for k in range(40)]
  assert all(len(b) == count for b in batches)
  seen = np.concatenate(batches)  # 400 examples: one epoch.
  assert sorted(seen.tolist()) == list(range(400))
  for g in range(0, 40, group):  # A group holds the stream's examples of its steps ...
    plain = [batching.train_indices(data, k, count, 0) for k in range(g, g + group)]
    assert sorted(np.concatenate(batches[g : g + group]).tolist()) == sorted(
      np.concatenate(plain).tolist()
    )
  # ... dealt into batches of about equal tokens: within one example's tokens of each other.
  totals = np.array([data.tokens[b].sum() for b in batches]).reshape(-1, group)
  plain_totals = np.array(
    [data.tokens[batching.train_indices(data, k, count, 0)].sum() for k in range(40)]
  ).reshape(-1, group)
  assert (np.ptp(totals, axis=1) <= data.tokens.max()).all()
  assert np.ptp(totals, axis=1).mean() < 0.25 * np.ptp(plain_totals, axis=1).mean()
  _clear_cache()  # A resumed run draws any step alone: the same batch.
  for k in (33, 5, 17):
    np.testing.assert_array_equal(
      batching.train_indices(data, k, count, 0, balance_steps=group), batches[k]
    )


def test_grouped_indices_depend_only_on_the_step():
  data = make_data("sts", 50)
  forward = [batching.train_indices(data, k, 5, 3, 8) for k in range(20)]
  _clear_cache()
  for k in (17, 2, 9):
    np.testing.assert_array_equal(batching.train_indices(data, k, 5, 3, 8), forward[k])
