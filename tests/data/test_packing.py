"""Sequence packing (mtl_jax.data.packing): the packed layout, the plan's shapes, and
exactness: a packed forward equals the unpacked one (hidden states of real tokens, pooled
vectors, head outputs, losses, per-task gradients, a whole train step with dropout off) on
the tiny model and on the bundled one, and attention never crosses sequences."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import assert_same_run, interrupt_at, needs_data, tiny_config

from mtl_jax import step, train
from mtl_jax.config import defaults as default
from mtl_jax.config import resume, run_spec
from mtl_jax.data import batching, packing
from mtl_jax.data.batching import Encoded
from mtl_jax.models import adapters, heads, hf_io, multitask, task_layers

S = 16  # Sequences per task batch.
TOL = 1e-5


def _encoded(
  task: str, rng: np.random.Generator, n: int, max_len: int = 20, cross: bool = False
) -> Encoded:
  """n random examples: [CLS] random ids [SEP], lengths 3..max_len; pairs for quora/sts."""

  def seq():
    body = rng.integers(5, 100, rng.integers(1, max_len - 1))
    return np.asarray([2, *body, 3], np.int32)

  ids = [f"{task}{i}" for i in range(n)]
  labels = (
    rng.integers(0, 5, n)
    if task == "sst"
    else rng.integers(0, 2, n)
    if task == "quora"
    else rng.uniform(0, 5, n)
  ).astype(np.float32)
  if task == "sst":
    return Encoded(task, "train", ids, [seq() for _ in range(n)], None, labels)
  if cross:
    first, types = [], []
    for _ in range(n):
      a, b = seq(), seq()[1:]
      first.append(np.concatenate([a, b]))
      types.append(np.asarray([0] * len(a) + [1] * len(b), np.int32))
    return Encoded(task, "train", ids, first, None, labels, types)
  return Encoded(task, "train", ids, [seq() for _ in range(n)], [seq() for _ in range(n)], labels)


def _datasets(seed: int = 0, cross: bool | tuple[str, ...] = False) -> list[Encoded]:
  """40 examples of each task; `cross`: True, or the pair tasks to cross-encode."""
  rng = np.random.default_rng(seed)
  crossed = ("quora", "sts") if cross is True else cross or ()
  return [_encoded(t, rng, 40, cross=t in crossed) for t in ("sst", "quora", "sts")]


@functools.cache  # Building is the slow part; the tests share models.
def _model(
  tiny_bert_dir,
  pooling="mean",
  head_spec=None,
  mode="lora",
  task_layer_kind=None,
  dtype="float32",
  dropout=0.0,
):
  head_spec = head_spec or heads.HeadSpec()
  lora = (
    adapters.LoraConfig(kind=mode, rank=4, alpha=8.0, dropout=dropout)
    if mode in adapters.KINDS
    else None
  )
  tl = task_layers.TaskLayerConfig(task_layer_kind, 3, 12) if task_layer_kind else None
  spec = multitask.ModelSpec(tiny_bert_dir, mode, lora, pooling, dropout, dtype, head_spec, tl)
  model, params = multitask.build(spec, jax.random.key(0))
  model = model.clone(
    config=dataclasses.replace(model.config, hidden_dropout=dropout, attention_dropout=dropout)
  )
  # Perturb every leaf so adapters (B = 0 at init), task layers and heads all matter.
  rng = np.random.default_rng(1)  # numpy: no per-shape compilation of an eager op.
  params = jax.tree.map(
    lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params
  )
  return model, params


PLAN = packing.PackPlan((32, 64))
SLOTS = packing.PackPlan((32, 64), slots=(2, 2, 1))  # Splits SST and a pair task.


def _batches(datasets, plan=PLAN, step_=0):
  """(unpacked, packed) batches of one step; with a plan's slots the packed one has lanes."""
  unpacked = batching.train_batch(datasets, step_, S, 0, (16, 32, 64))
  return unpacked, batching.train_batch(datasets, step_, S, 0, (16, 32, 64), plan=plan)


def _task(batch, t):
  return {k: v[t] for k, v in batch.items()}


# -------------------------------------------------------------------------------------
# Layout and plan
# -------------------------------------------------------------------------------------


def test_pack_puts_each_sequence_in_its_own_segment_with_positions_from_zero():
  unpacked, packed = _batches(_datasets())
  for t in range(3):
    u, p = _task(unpacked, t), _task(packed, t)
    lengths = u["attention_mask"].sum(-1)
    np.testing.assert_array_equal(p["seq_len"], lengths)
    assert p["attention_mask"].sum() == lengths.sum()  # Every real token, once.
    assert p["input_ids"].shape[0] < u["input_ids"].shape[0]  # Really packed.
    for i in np.flatnonzero(lengths):
      r, c, n = p["seq_row"][i], p["seq_start"][i], p["seq_len"][i]
      np.testing.assert_array_equal(p["input_ids"][r, c : c + n], u["input_ids"][i, :n])
      np.testing.assert_array_equal(p["token_type_ids"][r, c : c + n], u["token_type_ids"][i, :n])
      np.testing.assert_array_equal(p["position_ids"][r, c : c + n], np.arange(n))
      segment = p["segment_ids"][r, c]
      assert segment > 0 and (p["segment_ids"][r] == segment).sum() == n
    np.testing.assert_array_equal(p["labels"], u["labels"])
    np.testing.assert_array_equal(p["weights"], u["weights"])
  assert packing.num_sequences(packed) == packing.num_sequences(unpacked) == 3 * S


def test_cross_pairs_keep_their_token_types_in_one_segment():
  unpacked, packed = _batches(_datasets(cross=True))
  p = _task(packed, 1)
  for i in range(S):
    r, c, n = p["seq_row"][i], p["seq_start"][i], p["seq_len"][i]
    types = p["token_type_ids"][r, c : c + n]
    assert types[0] == 0 and types[-1] == 1 and len(set(p["segment_ids"][r, c : c + n])) == 1


def test_round_rows_ladder_and_device_multiples():
  assert [packing.round_rows(n) for n in (1, 4, 5, 8, 9, 16, 17, 32, 33, 41, 65)] == [
    1,
    4,
    5,
    8,
    10,
    16,
    20,
    32,
    40,
    48,
    80,
  ]
  for devices in (1, 2, 3, 4, 8):
    for n in range(1, 100):
      r = packing.round_rows(n, devices)
      assert r >= n and r % devices == 0
  # Above 8 rows, 1 and 2 devices pack a batch identically (every ladder value is even).
  assert [packing.round_rows(13, d) for d in (1, 2, 4)] == [14, 14, 16]
  assert [packing.round_rows(7, d) for d in (1, 2, 4)] == [7, 8, 8]


def test_plan_picks_the_row_length_that_computes_fewest_tokens():
  plan = packing.PackPlan((32, 64))
  # 16 sequences of 20 tokens: one per 32-row (16 rows = 512) or three per 64-row (6 rows =
  # 384): the 64-rows.
  assert plan.shape([np.full(16, 20)]) == (64, 6)
  # 16 of 12 tokens: two per 32-row (8 rows = 256) or five per 64-row (16/5 -> 4 rows = 256):
  # equal, so the shorter rows (cheaper attention).
  assert plan.shape([np.full(16, 12)]) == (32, 8)
  # 16 of 20 and 16 of 5 (two lanes): the most rows of any lane, 64-rows again.
  assert plan.shape([np.full(16, 20), np.full(16, 5)]) == (64, 6)
  assert plan.shape([np.full(16, 40)]) == (64, 16)  # Only 64 fits.
  with pytest.raises(ValueError, match="does not fit"):
    plan.shape([np.full(2, 65)])
  # Row lengths: every 16 tokens from 64 up to the largest bucket, whatever the buckets.
  assert packing.row_lengths((16, 32, 48, 64, 96, 128)) == (64, 80, 96, 112, 128)
  assert packing.row_lengths((32, 128)) == (64, 80, 96, 112, 128)
  assert packing.row_lengths((64, 100)) == (64, 80, 96, 100)
  assert packing.row_lengths((16, 32)) == (32,)


def test_first_fit_decreasing_fills_rows():
  rows = packing.first_fit_decreasing(np.array([10, 30, 20, 2, 0, 32]), 32)
  # Longest first: 32 fills a row, 30 opens one, 20 another, 10 joins 20, 2 joins 30; the
  # empty slot 4 is no sequence.
  assert rows == [[5], [1, 3], [2, 0]]


# -------------------------------------------------------------------------------------
# Exactness of the forward
# -------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _run(model, params, batch, task):
  """(per-sequence hidden states [S, L, H], pooled [S, D], head outputs) of one task's
  batch, packed or not (one compilation per shape: the task id is traced)."""
  packed = packing.is_packed(batch)
  args = (
    batch["input_ids"],
    batch["attention_mask"],
    batch["token_type_ids"],
    True,
    task,
    {k: batch[k] for k in packing.PACKING_KEYS} if packed else None,
  )
  hidden, pooled = model.apply({"params": params}, *args, method=multitask.MultitaskModel.embed)
  return hidden, pooled, multitask.apply(model, params, batch, task=task)


def _embed(model, params, batch, task):
  return _run(model, params, batch, task)[:2]


def _forward(model, params, batch, task):
  return _run(model, params, batch, task)[2]


def _assert_same_forward(model, params, unpacked, packed, tol=TOL):
  for t in range(3):
    u, p = _task(unpacked, t), _task(packed, t)
    hu, pu, ou = _run(model, params, u, t)
    hp, pp, op = _run(model, params, p, t)
    for i in range(S):
      n = int(u["attention_mask"][i].sum())
      if n:  # Hidden states of the real tokens.
        np.testing.assert_allclose(hp[i, :n], hu[i, :n], atol=tol, rtol=tol)
    real = u["attention_mask"].sum(-1) > 0
    np.testing.assert_allclose(np.asarray(pp)[real], np.asarray(pu)[real], atol=tol, rtol=tol)
    assert ou.keys() == op.keys()
    for k in ou:
      np.testing.assert_allclose(op[k], ou[k], atol=tol, rtol=tol, err_msg=k)


@pytest.mark.parametrize("pooling", ["mean", "cls", "concat"])
def test_packed_forward_equals_unpacked(tiny_bert_dir, one_layer_bert_dir, pooling):
  # Mean pooling on both layers: the packed layout reaches a second layer too. The other
  # tests use the first layer alone (`one_layer_bert_dir`: half the compilation, the same
  # code in every layer).
  model, params = _model(tiny_bert_dir if pooling == "mean" else one_layer_bert_dir, pooling)
  _assert_same_forward(model, params, *_batches(_datasets()))


@pytest.mark.parametrize(
  "spec",
  [
    heads.HeadSpec(kind="multi_stream", quora="cosine", sts="features"),
    heads.HeadSpec(kind="shared", sts_loss="cosine"),
  ],
)
def test_packed_forward_equals_unpacked_other_heads(one_layer_bert_dir, spec):
  model, params = _model(one_layer_bert_dir, head_spec=spec)
  _assert_same_forward(model, params, *_batches(_datasets()))


def test_packed_cross_encoded_pairs_equal_unpacked(one_layer_bert_dir):
  model, params = _model(
    one_layer_bert_dir, head_spec=heads.HeadSpec(sts="features", pairs="cross")
  )
  _assert_same_forward(model, params, *_batches(_datasets(cross=True)))


@pytest.mark.parametrize(
  "spec",
  [heads.HeadSpec(pairs="quora=cross"), heads.HeadSpec(sts="features", pairs="sts=cross")],
  ids=lambda spec: spec.pairs,
)
def test_packed_mixed_pair_encodings_equal_unpacked(one_layer_bert_dir, spec):
  model, params = _model(one_layer_bert_dir, head_spec=spec)
  data = _datasets(cross=spec.cross_tasks)
  assert [d.is_cross_pair for d in data[1:]] == [spec.cross("quora"), spec.cross("sts")]
  _assert_same_forward(model, params, *_batches(data))


@pytest.mark.parametrize("kind", ["pals", "low_rank"])
def test_packed_task_layers_equal_unpacked(one_layer_bert_dir, kind):
  model, params = _model(one_layer_bert_dir, mode="probe", task_layer_kind=kind)
  _assert_same_forward(model, params, *_batches(_datasets()))


def test_packed_bfloat16_is_close_to_unpacked(one_layer_bert_dir):
  model, params = _model(one_layer_bert_dir, dtype="bfloat16")
  unpacked, packed = _batches(_datasets())
  for t in range(3):
    ou, op = (
      _forward(model, params, _task(unpacked, t), t),
      _forward(model, params, _task(packed, t), t),
    )
    for k in ou:  # bf16 rounding differs with the layout; far from a layout mistake.
      np.testing.assert_allclose(op[k], ou[k], atol=0.1, rtol=0.05, err_msg=k)


def test_attention_never_crosses_sequences(one_layer_bert_dir):
  # PALs add attention of their own; the model (and its packed program) of the test above.
  model, params = _model(one_layer_bert_dir, mode="probe", task_layer_kind="pals")
  _, packed = _batches(_datasets())
  p = _task(packed, 0)
  row = int(np.argmax(np.bincount(p["seq_row"][p["seq_len"] > 0])))  # A row with neighbours.
  members = np.flatnonzero((p["seq_row"] == row) & (p["seq_len"] > 0))
  assert len(members) >= 2
  keep, change = members[0], members[1:]
  changed = {k: v.copy() for k, v in p.items()}
  for i in change:  # New tokens for every neighbour of `keep` in its row.
    c, n = p["seq_start"][i], p["seq_len"][i]
    changed["input_ids"][row, c + 1 : c + n - 1] = (
      p["input_ids"][row, c + 1 : c + n - 1] + 7
    ) % 90 + 5
  h0, pooled0 = _embed(model, params, p, 0)
  h1, pooled1 = _embed(model, params, changed, 0)
  n = p["seq_len"][keep]
  np.testing.assert_allclose(h1[keep, :n], h0[keep, :n], atol=1e-6)
  np.testing.assert_allclose(pooled1[keep], pooled0[keep], atol=1e-6)
  assert not np.allclose(pooled1[change[0]], pooled0[change[0]], atol=1e-3)  # Really changed.


# -------------------------------------------------------------------------------------
# Losses, gradients, a train step
# -------------------------------------------------------------------------------------


def _split(model, params):
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, "lora"))
  return trainable, frozen


@pytest.mark.parametrize("plan, weighting", [(PLAN, False), (SLOTS, False), (SLOTS, True)])
def test_packed_losses_and_per_task_gradients_equal_unpacked(one_layer_bert_dir, plan, weighting):
  model, params = _model(one_layer_bert_dir)
  trainable, frozen = _split(model, params)
  if weighting:  # Uncertainty weighting: exp(-s) L / 2 + s / 2 per task, summed over its lanes.
    trainable = _with_uncertainty(trainable)
  per_task = jax.jit(step.make_per_task_grads(model))
  keys = jax.random.split(jax.random.key(0), 3)
  unpacked, packed = _batches(_datasets(), plan)
  lu, gu = per_task(trainable, frozen, unpacked, jnp.arange(3), keys)
  lp, gp = per_task(trainable, frozen, packed, jnp.arange(3), keys)
  np.testing.assert_allclose(lp, lu, atol=TOL, rtol=TOL)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
    assert a.shape == b.shape  # [T, ...]: slots summed back into tasks.
    np.testing.assert_allclose(a, b, atol=TOL, rtol=1e-4)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gu)) > 1e-3  # Not trivially 0.
  if weighting:
    assert float(jnp.abs(jnp.diagonal(gu["loss_weighting"]["log_var"])).min()) > 1e-3


@pytest.mark.parametrize("plan", [None, PLAN, SLOTS])
def test_full_fine_tuning_word_table_gradient_is_each_tasks_own(one_layer_bert_dir, plan):
  """Full fine-tuning scatter-adds the lanes' word-vector gradients into per-task table
  gradients (`step.make_per_task_grads`); each task's must equal plain autodiff of that
  task's loss (the sum over its lanes) with the table inside the differentiated params."""
  model, params = _model(one_layer_bert_dir, mode="full")
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, "full"))
  unpacked, packed = _batches(_datasets(), plan or PLAN)
  batch = unpacked if plan is None else packed
  keys = jax.random.split(jax.random.key(0), 3)
  losses, grads = jax.jit(step.make_per_task_grads(model))(
    trainable, frozen, batch, jnp.arange(3), keys
  )
  lane_tasks, lane_keys, _ = step.lanes(batch, jnp.arange(3), keys)
  loss_grad = jax.jit(jax.value_and_grad(step.make_loss_fn(model)))
  want = [None] * 3
  for k, t in enumerate(np.asarray(lane_tasks)):
    lane = {name: v[k] for name, v in batch.items()}
    _, g = loss_grad(trainable, frozen, lane, lane_tasks[k], lane_keys[k])
    want[t] = g if want[t] is None else jax.tree.map(jnp.add, want[t], g)
  table = lambda tree: tree["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert table(grads).shape == (3, *table(trainable).shape)
  assert float(jnp.abs(table(grads)).max()) > 1e-4  # Not trivially 0.
  for t in range(3):
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda g: g[t], grads)), jax.tree.leaves(want[t])):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
  untouched = np.setdiff1d(np.arange(table(trainable).shape[0]), np.asarray(batch["input_ids"]))
  assert float(jnp.abs(table(grads)[:, untouched]).max()) == 0.0  # Rows of absent tokens.


@pytest.mark.parametrize("pairs", ["bi", "quora=cross"])
def test_packed_cosent_losses_and_gradients_equal_unpacked_with_sts_in_one_lane(
  one_layer_bert_dir, pairs
):
  """CoSENT ranks the pairs of a batch: slots that split SST and Quora but keep STS in one
  lane (what train_batches chooses under CoSENT) give the unpacked losses and gradients;
  splitting STS would change its loss (each half ranks only its own pairs)."""
  spec = heads.HeadSpec(sts_loss="cosent", pairs=pairs)
  model, params = _model(one_layer_bert_dir, head_spec=spec)
  trainable, frozen = _split(model, params)
  per_task = jax.jit(step.make_per_task_grads(model))
  keys = jax.random.split(jax.random.key(0), 3)
  datasets = _datasets(cross=spec.cross_tasks)
  whole = packing.PackPlan((32, 64), slots=(2, 2, 1))
  unpacked, packed = _batches(datasets, whole)
  lu, gu = per_task(trainable, frozen, unpacked, jnp.arange(3), keys)
  lp, gp = per_task(trainable, frozen, packed, jnp.arange(3), keys)
  np.testing.assert_allclose(lp, lu, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  assert float(lu[2]) > 0.1
  _, split = _batches(datasets, packing.PackPlan((32, 64), slots=(1, 1, 2)))
  ls, _ = per_task(trainable, frozen, split, jnp.arange(3), keys)
  np.testing.assert_allclose(ls[:2], lu[:2], atol=1e-5, rtol=1e-5)
  assert abs(float(ls[2]) - float(lu[2])) > 1e-3  # Two halves rank fewer pairs.


def _with_uncertainty(trainable):
  return {**trainable, "loss_weighting": {"log_var": jnp.asarray([0.3, -0.2, 0.1])}}


@pytest.mark.parametrize("plan", [PLAN, SLOTS])
def test_packed_train_step_gives_the_unpacked_update(one_layer_bert_dir, plan):
  model, params = _model(one_layer_bert_dir)
  trainable, frozen = _split(model, params)
  from mtl_jax import grad as mtlgrad

  tx = optax.chain(
    mtlgrad.shared_only(mtlgrad.pcgrad(), multitask.is_shared(trainable)), optax.adamw(1e-3)
  )
  state = step.TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))
  step_fn = jax.jit(step.make_train_step(model, tx, (0, 1, 2), 0))
  unpacked, packed = _batches(_datasets(), plan)
  su, mu = step_fn(state, frozen, unpacked)
  sp, mp = step_fn(state, frozen, packed)
  np.testing.assert_allclose(mp["task_loss"], mu["task_loss"], atol=TOL, rtol=TOL)
  np.testing.assert_allclose(mp["grad/cosine"], mu["grad/cosine"], atol=1e-5)
  for a, b, before in zip(
    jax.tree.leaves(sp.trainable), jax.tree.leaves(su.trainable), jax.tree.leaves(trainable)
  ):
    np.testing.assert_allclose(a - before, b - before, atol=1e-6, rtol=1e-3)


def test_one_task_batches_pack_too():
  datasets = _datasets()
  one = batching.train_batch([datasets[2]], 0, S, 0, (16, 32, 64), plan=PLAN)
  assert one["input_ids"].shape[0] == 1 and packing.is_packed(one)


def test_eval_batches_pack_and_predict_the_same(one_layer_bert_dir):
  from mtl_jax.evaluate import make_predict_fn, predict_split

  model, params = _model(one_layer_bert_dir)
  predict = make_predict_fn(model)
  for data in _datasets():
    a = predict_split(predict, params, data, S, (16, 32, 64))
    b = predict_split(predict, params, data, S, (16, 32, 64), PLAN)
    np.testing.assert_allclose(b, a, atol=TOL, rtol=TOL)


# -------------------------------------------------------------------------------------
# Slots: a task's examples over several lanes, summed back into its loss and gradient
# -------------------------------------------------------------------------------------


def test_split_examples_balances_tokens_in_batch_order():
  data = Encoded(
    "sst",
    "train",
    list("abcde"),
    [np.ones(n, np.int32) for n in (9, 2, 5, 4, 3)],
    None,
    np.zeros(5, np.float32),
  )
  # Longest first into the lighter group: 9 -> A, 5 -> B, 4 -> B (9), 3 -> A (12), 2 -> B (11).
  groups = batching.split_examples(data, np.array([0, 1, 2, 3, 4]), 2)
  assert [g.tolist() for g in groups] == [[0, 4], [1, 2, 3]]
  pairs = Encoded(
    "sts",
    "train",
    list("abc"),
    [np.ones(n, np.int32) for n in (2, 8, 3)],
    [np.ones(n, np.int32) for n in (9, 1, 3)],
    np.zeros(3, np.float32),
  )
  np.testing.assert_array_equal(pairs.tokens, [11, 9, 6])  # Both sentences count.
  assert [g.tolist() for g in batching.split_examples(pairs, np.array([2, 1, 0]), 2)] == [
    [0],  # 11 tokens.
    [2, 1],  # 9 + 6, in the batch's order.
  ]
  assert [len(g) for g in batching.split_examples(pairs, np.array([1]), 3)] == [1, 0, 0]


def test_slots_hold_each_example_once_with_shares_summing_to_one():
  datasets = _datasets()
  unpacked = batching.train_batch(datasets, 0, S, 0, (16, 32, 64))
  slotted = batching.train_batch(datasets, 0, S, 0, (16, 32, 64), plan=SLOTS)
  np.testing.assert_array_equal(slotted["slot_task"], [0, 0, 1, 1, 2])
  assert slotted["input_ids"].shape[0] == 5 and packing.is_packed(slotted)
  for t in range(3):
    lanes = np.flatnonzero(slotted["slot_task"] == t)
    assert slotted["slot_share"][lanes].sum() == pytest.approx(1.0)
    weights = slotted["weights"][lanes]
    np.testing.assert_allclose(slotted["slot_share"][lanes], weights.sum(1) / weights.sum())
    # The lanes' real examples are the task's, each once (labels as a multiset).
    labels = np.sort(slotted["labels"][lanes][weights > 0])
    np.testing.assert_array_equal(
      labels, np.sort(unpacked["labels"][t][unpacked["weights"][t] > 0])
    )
    assert slotted["attention_mask"][lanes].sum() == unpacked["attention_mask"][t].sum()
  assert packing.num_sequences(slotted) == 3 * S
  # One-task batches (their own schedules) never split: no slots key.
  one = batching.train_batch(datasets[:1], 0, S, 0, (16, 32, 64), plan=SLOTS)
  assert "slot_task" not in one and one["input_ids"].shape[0] == 1


def test_lanes_keep_each_task_its_key_and_sum_into_tasks():
  keys = jax.random.split(jax.random.key(3), 3)
  batch = {"slot_task": jnp.asarray([0, 0, 1, 2, 2, 2])}
  tasks, lane_keys, combine = step.lanes(batch, jnp.asarray([0, 1, 2]), keys)
  np.testing.assert_array_equal(tasks, [0, 0, 1, 2, 2, 2])
  data = np.asarray(jax.random.key_data(lane_keys))
  for lane, task in ((0, 0), (2, 1), (3, 2)):  # A task's first lane: its own key.
    np.testing.assert_array_equal(data[lane], jax.random.key_data(keys[task]))
  assert len({tuple(k) for k in data}) == 6  # Further lanes: keys of their own.
  np.testing.assert_array_equal(
    combine, [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]
  )
  x = jnp.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(step.sum_lanes(combine, x), [[2, 4], [4, 5], [24, 27]])
  assert step.lanes({}, jnp.arange(3), keys)[2] is None


def test_slot_candidates_and_the_cheapest_choice():
  assert packing.slot_candidates([1600, 1011, 941]) == [(1, 1, 1), (2, 1, 1), (3, 2, 2), (4, 3, 3)]
  assert packing.slot_candidates([500, 500]) == [(1, 1), (2, 2), (3, 3)]
  costs = {(1, 1, 1): 90, (2, 1, 1): 70, (3, 2, 2): 70, (4, 3, 3): 80}
  chosen = packing.choose_slots(PLAN, [1600, 1011, 941], lambda p: costs[p.slots])
  assert chosen.slots == (2, 1, 1) and chosen.lengths == PLAN.lengths  # Fewest lanes on a tie.


@needs_data
def test_a_run_packs_with_the_slots_that_compute_fewest_tokens(tiny_bert_dir):
  config = tiny_config(tiny_bert_dir, steps=2)
  data = train.load_data(run_spec.build(config), hf_io.load_tokenizer(config.model.path))["train"]
  batches = train.train_batches(run_spec.build(config), data)
  s, buckets = config.train.seqs_per_task, tuple(config.train.length_buckets)

  def computed(slots):
    plan = dataclasses.replace(batches.plan, slots=slots)
    return sum(
      batching.train_batch(data, k, s, config.seed, buckets, plan=plan)["input_ids"].size
      for k in range(packing.SLOT_SAMPLE_STEPS)
    )

  tokens = [d.tokens.mean() * batching.examples_per_batch(d, s) for d in data]
  assert computed(batches.plan.slots) == min(computed(c) for c in packing.slot_candidates(tokens))
  lanes = batches(0)["input_ids"].shape[0]
  assert (
    lanes == sum(batches.plan.slots) and batches.plan.lengths == run_spec.pack_plan(config).lengths
  )


# -------------------------------------------------------------------------------------
# Config: on by default, off by one key, old runs resume unpacked
# -------------------------------------------------------------------------------------


def test_packing_is_on_by_default_and_off_by_one_key():
  config = default.get_config()
  assert config.train.packing is True and run_spec.pack_plan(config, 2).devices == 2
  assert run_spec.pack_plan(config).lengths == (64, 80, 96, 112, 128)
  assert run_spec.pack_plan(config, for_eval=True).lengths == (128,)
  config.train.packing = False
  assert run_spec.pack_plan(config) is None
  saved = json.loads(config.to_json_best_effort())
  saved["train"]["packing"] = "yes"  # A hand-edited config.json, say.
  with pytest.raises(run_spec.ConfigError, match="train.packing"):
    run_spec.build(ml_collections.ConfigDict(saved))


def test_an_old_config_without_the_key_resumes_unpacked():
  config = default.get_config()
  saved = json.loads(config.to_json_best_effort())
  del saved["train"]["packing"], saved["train"]["token_balancing"]
  saved["train"]["length_grouping"] = 32  # That run's default.
  assert resume.resume_mismatches(saved, config) == [
    ("train.length_grouping", 32, 0),
    ("train.packing", False, True),
    ("train.token_balancing", 0, 16),
  ]
  assert resume.adopt_saved(saved, config) == [
    "train.token_balancing=0",
    "train.packing=False",
    "train.length_grouping=32",
  ]
  assert config.train.packing is False and run_spec.pack_plan(config) is None
  assert config.train.length_grouping == 32 and config.train.token_balancing == 0
  run_spec.build(config)
  resume.check_resume(saved, config, "w")  # No longer a mismatch.
  # A saved run that packed keeps packing; one that did not keeps not: no adoption.
  assert resume.adopt_saved(json.loads(config.to_json_best_effort()), config) == []


def test_a_config_without_token_balancing_resumes_in_stream_order():
  """A packed run written before train.token_balancing existed drew its steps in stream
  order: it resumes so (a changed order would repeat and skip examples mid-epoch)."""
  config = default.get_config()
  saved = json.loads(config.to_json_best_effort())
  del saved["train"]["token_balancing"]
  assert resume.resume_mismatches(saved, config) == [("train.token_balancing", 0, 16)]
  with pytest.raises(run_spec.ConfigError, match="train.token_balancing"):
    resume.check_resume(saved, config, "w")
  assert resume.adopt_saved(saved, config) == ["train.token_balancing=0"]
  assert config.train.token_balancing == 0 and config.train.packing is True
  resume.check_resume(saved, config, "w")


@needs_data
def test_old_workdir_resumes_unpacked_as_before(one_layer_bert_dir, tmp_path, monkeypatch):
  """A run written before train.packing existed, interrupted, then rerun with today's
  default config (packing on): it resumes unpacked and ends as an uninterrupted unpacked
  run, bitwise (on the one-layer model: the resume logic does not depend on depth)."""
  straight, old = str(tmp_path / "straight"), str(tmp_path / "old")

  def tiny(**kw):
    config = tiny_config(
      one_layer_bert_dir, steps=2, checkpoint_every=1, length_buckets=(32,), **kw
    )
    config.eval.write_predictions = False
    return config

  # Defaults before packing.
  unpacked = lambda: tiny(packing=False, length_grouping=32, token_balancing=0)
  train.train_and_evaluate(unpacked(), straight)
  with monkeypatch.context() as m:
    interrupt_at(m, 1)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(unpacked(), old)
  path = os.path.join(old, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["train"]["packing"], saved["train"]["token_balancing"]  # Before the keys existed.
  with open(path, "w") as f:
    json.dump(saved, f)
  config = tiny()
  assert config.train.packing is True and config.train.length_grouping == 0
  assert config.train.token_balancing > 1
  train.train_and_evaluate(config, old)  # No refusal: resumes unpacked, grouped.
  with open(path) as f:
    rewritten = json.load(f)["train"]
  assert rewritten["packing"] is False and rewritten["length_grouping"] == 32
  assert_same_run(unpacked(), straight, old, 2)
  with open(os.path.join(old, "results.json")) as f:
    results = json.load(f)
  assert 0 < results["real_tokens"] <= results["computed_tokens"]


# -------------------------------------------------------------------------------------
# The bundled model
# -------------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_data
def test_packed_forward_equals_unpacked_on_the_bundled_model():
  config = default.get_config()
  if not config.model.path:
    pytest.skip("bundled model not installed")
  from mtl_jax.models import hf_io

  config.data_limit = 200
  config.data_dir = ""
  data = train.load_data(run_spec.build(config), hf_io.load_tokenizer(config.model.path))
  model, params = _model(config.model.path)
  unpacked = batching.train_batch(data["train"], 0, S, 0, tuple(config.train.length_buckets))
  packed = packing.pack_stack(unpacked, run_spec.pack_plan(config))
  assert packed["input_ids"].size < unpacked["input_ids"].size
  _assert_same_forward(model, params, unpacked, packed)
  trainable, frozen = _split(model, params)
  per_task = jax.jit(step.make_per_task_grads(model))
  keys = jax.random.split(jax.random.key(0), 3)
  lu, gu = per_task(trainable, frozen, unpacked, jnp.arange(3), keys)
  slotted = batching.train_batch(
    data["train"],
    0,
    S,
    0,
    tuple(config.train.length_buckets),
    plan=dataclasses.replace(run_spec.pack_plan(config), slots=(3, 2, 2)),
  )
  assert slotted["input_ids"].shape[0] == 7
  for layout in (packed, slotted):
    lp, gp = per_task(trainable, frozen, layout, jnp.arange(3), keys)
    np.testing.assert_allclose(lp, lu, atol=TOL, rtol=TOL)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
      np.testing.assert_allclose(a, b, atol=TOL, rtol=1e-4)
