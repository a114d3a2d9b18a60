"""mtl_jax.data.schedules: task sampling, epochs, undersampling, the one-task train step, the
refusal of methods that need every task, and exact resume with a one-task schedule."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import (
  assert_same_run,
  default_config_with,
  interrupt_at,
  make_data,
  needs_data,
  read_metrics,
  tiny_config,
)

from mtl_jax import train
from mtl_jax.config import defaults as default
from mtl_jax.config import resume, run_spec, upgrade
from mtl_jax.data import batching, schedules
from mtl_jax.data.files import DataError
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.step import make_loss_fn, make_train_step
from mtl_jax.tasks import TASKS

BUCKETS = (8, 16, 32)
CS224N_SIZES = (8544, 16214, 6040)  # The training sets; B = (134, 507, 189) at 64 sequences.


def _schedule(kind, sizes=CS224N_SIZES, seqs=64, steps=1000, seed=0, caps=(0, 0, 0), group=0):
  return schedules.make(kind, sizes, caps, seqs, steps, seed, group)


def _datasets():
  return [
    make_data("sst", 37, seed=1),
    make_data("quora", 23, seed=2),
    make_data("sts", 29, seed=3),
  ]


def _clear_caches():
  schedules.epoch_tasks.cache_clear()
  schedules._epoch_counts.cache_clear()
  batching._epoch_order.cache_clear()


def _digest(batches) -> str:
  h = hashlib.sha256()
  for b in batches:
    for key in sorted(b):
      h.update(key.encode())
      h.update(str(b[key].shape).encode())
      h.update(b[key].tobytes())
  return h.hexdigest()


def _example_ids(batch, at, rows):
  """Example indices in the first `rows` rows of the batch at stack position `at`
  (make_data's token ids encode them)."""
  return batch["input_ids"][at, :rows, 1] - 1000


# --------------------------------------------------------------------------
# all_tasks: the default stays bit for bit what it was
# --------------------------------------------------------------------------


# sha256 of batching.train_batch(_datasets(), k, 8, seed, BUCKETS, group) for k < 40,
# computed with the code before schedules existed (numpy 2's Generator streams: a numpy that
# changed them would change these, and every run's data order, too).
BEFORE_SCHEDULES = {
  (0, 0): "b0e27e62908abab2db079931b82f23f8758602da0d61f6eddd63c2984acb1132",
  (0, 3): "61ace7c6c0903f2db9f49de6a7ff805b993f1ea82c491d106547dc29e9d86253",
  (4, 0): "6ae86cb1580c96428ad7540a0d9772fa6dc60bcf3c353cb15ccb12fe9076ef4c",
  (4, 3): "6ba33c3be9c34536de9f0be9604fc3c1a4411be3d57a616a768080798cd0a315",
}


@pytest.mark.parametrize("group, seed", sorted(BEFORE_SCHEDULES))
def test_default_schedule_batches_are_unchanged(group, seed):
  datasets = _datasets()
  s = run_spec.train_schedule(
    default_config_with(
      **{
        "train.length_grouping": group,
        "train.token_balancing": 0,  # Stream order (or length groups), as before balancing.
        "seed": seed,
        "train.seqs_per_task": 8,
      }
    ),
    tuple(len(d) for d in datasets),
  )
  assert s.kind == "all_tasks" and not s.one_task
  batches = [schedules.train_batch(datasets, k, s, BUCKETS) for k in range(40)]
  assert _digest(batches) == BEFORE_SCHEDULES[group, seed]
  plain = [batching.train_batch(datasets, k, 8, seed, BUCKETS, group) for k in range(40)]
  assert _digest(plain) == BEFORE_SCHEDULES[group, seed]


# --------------------------------------------------------------------------
# Undersampling: train.epoch_examples
# --------------------------------------------------------------------------


@pytest.mark.parametrize("group", [0, 3])
def test_capped_task_sees_a_fresh_subset_of_exactly_cap_examples_each_epoch(group):
  datasets = _datasets()  # Quora: 23 pairs, capped at 12 = 3 batches of 4 pairs.
  cap, per_batch = 12, 4
  s = _schedule("all_tasks", tuple(len(d) for d in datasets), seqs=8, caps=(0, cap, 0), group=group)
  batches = [schedules.train_batch(datasets, k, s, BUCKETS) for k in range(12)]
  quora = np.concatenate([_example_ids(b, 1, per_batch) for b in batches])
  epochs = [set(quora[e * cap : (e + 1) * cap].tolist()) for e in range(4)]
  for subset in epochs:
    assert len(subset) == cap and subset <= set(range(23))
  assert len({frozenset(x) for x in epochs}) == 4  # A different random subset every epoch.
  # The uncapped tasks are untouched by the cap.
  plain = [batching.train_batch(datasets, k, 8, 0, BUCKETS, group) for k in range(12)]
  for b, p in zip(batches, plain):
    for t in (0, 2):
      np.testing.assert_array_equal(b["input_ids"][t], p["input_ids"][t])


def test_a_cap_at_or_above_the_set_size_is_the_whole_set():
  datasets = _datasets()
  sizes = tuple(len(d) for d in datasets)
  uncapped = _schedule("all_tasks", sizes, seqs=8)
  capped = _schedule("all_tasks", sizes, seqs=8, caps=(37, 10_000, 0))
  assert capped.epoch_sizes == uncapped.epoch_sizes == sizes
  assert capped == uncapped


# --------------------------------------------------------------------------
# Sampled schedules: proportions
# --------------------------------------------------------------------------


def _frequencies(s, epochs):
  tasks = np.concatenate([schedules.epoch_tasks(s, e) for e in epochs])
  return np.bincount(tasks, minlength=3) / len(tasks), len(tasks)


def _assert_within_standard_errors(freq, p, n, k=4.0):
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) < k * se), (freq, p, se)


@pytest.mark.parametrize("kind, alpha", [("proportional", 1.0), ("sqrt", 0.5)])
def test_sampled_task_frequencies(kind, alpha):
  s = _schedule(kind, steps=25 * 830)
  batches = np.array([134, 507, 189])  # ceil(N / examples per batch): SST 64, pairs 32.
  np.testing.assert_array_equal(schedules.batches_per_epoch(s), batches)
  p = batches**alpha / (batches**alpha).sum()
  np.testing.assert_allclose(schedules.task_probabilities(s, 0), p)
  freq, n = _frequencies(s, range(25))
  assert n == 20_750
  _assert_within_standard_errors(freq, p, n)


def test_proportional_with_equal_batch_sizes_is_p_proportional_to_n():
  """Quora and STS batches hold the same number of pairs: p ∝ N between them."""
  s = _schedule("proportional", sizes=(6400, 3200, 1600))
  p = schedules.task_probabilities(s, 0)
  assert p[1] / p[2] == pytest.approx(2.0)
  assert p[0] / p[2] == pytest.approx(2.0)  # SST: 4x the examples in batches of 2x as many.


def test_draws_depend_only_on_seed_and_step():
  s, other = _schedule("sqrt"), _schedule("sqrt", seed=1)
  forward = [schedules.step_task(s, k) for k in range(0, 3000, 7)]
  _clear_caches()
  backward = [schedules.step_task(s, k) for k in reversed(range(0, 3000, 7))][::-1]
  assert forward == backward
  assert forward != [schedules.step_task(other, k) for k in range(0, 3000, 7)]


# --------------------------------------------------------------------------
# Annealing
# --------------------------------------------------------------------------


def test_annealing_alpha_values():
  assert schedules.annealing_alpha(0, 5) == 1.0  # e = 1 in the paper's 1-based count.
  assert schedules.annealing_alpha(1, 5) == pytest.approx(0.8)
  assert schedules.annealing_alpha(2, 5) == pytest.approx(0.6)
  assert schedules.annealing_alpha(4, 5) == pytest.approx(0.2)  # e = E.
  assert schedules.annealing_alpha(1, 2) == pytest.approx(0.2)
  assert schedules.annealing_alpha(0, 1) == 1.0  # A single epoch: proportional.


def test_annealed_epochs_and_probabilities():
  sizes = tuple(10 * n for n in CS224N_SIZES)  # P = 8290 steps: enough draws per epoch.
  steps_per_epoch = 1335 + 5067 + 1888
  s = _schedule("annealed", sizes=sizes, steps=4 * steps_per_epoch + 1)
  assert schedules.steps_per_epoch(s) == steps_per_epoch
  assert schedules.num_epochs(s) == 5  # The last one partial (one step).
  batches = schedules.batches_per_epoch(s).astype(float)
  for e, alpha in enumerate([1.0, 0.8, 0.6, 0.4, 0.2]):
    np.testing.assert_allclose(
      schedules.task_probabilities(s, e), batches**alpha / (batches**alpha).sum()
    )
  for e in (0, 4):
    freq, n = _frequencies(s, [e])
    _assert_within_standard_errors(freq, schedules.task_probabilities(s, e), n)
  # Step k's task comes from its epoch's draws.
  k = 3 * steps_per_epoch + 17
  assert schedules.step_task(s, k)[0] == schedules.epoch_tasks(s, 3)[17]
  short = _schedule("annealed", sizes=sizes, steps=steps_per_epoch)
  assert schedules.num_epochs(short) == 1
  np.testing.assert_allclose(
    schedules.task_probabilities(short, 0),
    schedules.task_probabilities(_schedule("proportional", sizes), 0),
  )


# --------------------------------------------------------------------------
# Deterministic schedules and stream positions
# --------------------------------------------------------------------------


def test_sequential_order():
  s = _schedule("sequential", sizes=(20, 9, 13), seqs=4)  # B = (5, 5, 7).
  epoch = [0] * 5 + [1] * 5 + [2] * 7
  assert [schedules.step_task(s, k)[0] for k in range(34)] == epoch + epoch
  assert [schedules.step_task(s, k)[1] for k in range(17, 22)] == [5, 6, 7, 8, 9]


def test_sequential_with_a_cap_shortens_that_task():
  s = _schedule("sequential", sizes=(20, 9, 13), seqs=4, caps=(8, 0, 0))  # B = (2, 5, 7).
  assert [schedules.step_task(s, k)[0] for k in range(14)] == [0] * 2 + [1] * 5 + [2] * 7


def test_round_robin_order():
  s = _schedule("round_robin", sizes=(20, 9, 13), seqs=4)  # P = 17: not a multiple of T.
  assert [schedules.step_task(s, k) for k in range(60)] == [(k % 3, k // 3) for k in range(60)]


@pytest.mark.parametrize("kind", schedules.ONE_TASK_SCHEDULES)
def test_batch_numbers_count_the_earlier_steps_of_the_task(kind):
  """Each task's stream is consumed in order, without gaps or repeats, and step k's batch
  number is derived from k alone (as after a resume)."""
  s = _schedule(kind, sizes=(200, 90, 130), seqs=8, steps=300)  # 4 epochs of 74 steps.
  plan = [schedules.step_task(s, k) for k in range(300)]
  seen = [0, 0, 0]
  for task, number in plan:
    assert number == seen[task]
    seen[task] += 1
  _clear_caches()
  for k in (299, 150, 74, 73, 0):
    assert schedules.step_task(s, k) == plan[k]


def test_one_task_batch_layout():
  datasets = _datasets()
  s = _schedule("round_robin", tuple(len(d) for d in datasets), seqs=8, caps=(0, 12, 0))
  for k in range(9):
    batch = schedules.train_batch(datasets, k, s, BUCKETS)
    task, number = schedules.step_task(s, k)
    assert batch["task"].dtype == np.int32 and batch["task"].shape == () and batch["task"] == task
    length = batch["input_ids"].shape[-1]
    assert batch["input_ids"].shape == (1, 8, length) and batch["labels"].shape == (1, 8)
    data = datasets[task]
    idx = batching.train_indices(
      data, number, batching.examples_per_batch(data, 8), 0, 0, s.epoch_sizes[task]
    )
    np.testing.assert_array_equal(_example_ids(batch, 0, len(idx)), idx)
    assert length == batching.bucket_length(int(data.lengths[idx].max()), BUCKETS)


@pytest.mark.parametrize("kind", ["all_tasks", *schedules.ONE_TASK_SCHEDULES])
def test_every_task_batch_holds_each_tasks_next_batch(kind):
  """What diagnose compares gradients on: the step's own batch for all_tasks; under a
  one-task schedule, the step's batch for its task and, for each other task, the batch of
  the next step that trains it."""
  datasets = _datasets()
  s = _schedule(kind, tuple(len(d) for d in datasets), seqs=8, steps=40, caps=(0, 12, 0))
  drawn = [schedules.train_batch(datasets, k, s, BUCKETS) for k in range(40)]
  for k in range(20):
    every = schedules.every_task_batch(datasets, k, s, BUCKETS)
    assert "task" not in every and every["input_ids"].shape[:2] == (3, 8)
    if kind == "all_tasks":
      for key in drawn[k]:
        np.testing.assert_array_equal(every[key], drawn[k][key])
      continue
    for t, data in enumerate(datasets):
      n = batching.examples_per_batch(data, 8)
      nxt = next(j for j in range(k, 40) if drawn[j]["task"] == t)
      np.testing.assert_array_equal(_example_ids(every, t, n), _example_ids(drawn[nxt], 0, n))
    assert schedules.stream_positions(s, k)[int(drawn[k]["task"])] == schedules.step_task(s, k)[1]


# --------------------------------------------------------------------------
# Config: validation, refusal, resume keys
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", schedules.ONE_TASK_SCHEDULES)
@pytest.mark.parametrize("method", ["pcgrad", "mean", "mgda", "cagrad", "dwa", "rlw"])
def test_one_task_schedule_refuses_methods_that_need_every_task(kind, method):
  config = default_config_with(**{"train.schedule": kind, "grad.method": method})
  with pytest.raises(run_spec.ConfigError) as info:
    run_spec.build(config)
  message = str(info.value)
  assert "train.schedule" in message and "grad.method" in message and method in message
  run_spec.build(default_config_with(**{"train.schedule": "all_tasks", "grad.method": method}))


@pytest.mark.parametrize("kind", schedules.ONE_TASK_SCHEDULES)
def test_one_task_schedule_accepts_linear_methods(kind):
  run_spec.build(default_config_with(**{"train.schedule": kind, "grad.method": "Sum"}))
  config = default_config_with(**{"train.schedule": kind, "grad.method": "fixed"})
  config.grad.kwargs.weights = (1.0, 0.5, 2.0)
  run_spec.build(config)
  run_spec.build(
    default_config_with(**{"train.schedule": kind, "train.loss_weighting": "uncertainty"})
  )


@pytest.mark.parametrize(
  "key, value", [("train.schedule", "alternating"), ("train.epoch_examples.quora", -1)]
)
def test_bad_schedule_values_name_the_key(key, value):
  with pytest.raises(run_spec.ConfigError, match=key.replace(".", r"\.")):
    run_spec.build(default_config_with(**{key: value}))


@pytest.mark.parametrize("value", [2.5e4, True, "20k"])
def test_a_cap_must_be_an_integer(value):
  """A hand-edited config.json is not type-checked by ConfigDict: validate is."""
  tree = json.loads(default_config_with().to_json_best_effort())
  tree["train"]["epoch_examples"]["quora"] = value
  with pytest.raises(run_spec.ConfigError, match=r"train\.epoch_examples\.quora"):
    run_spec.build(ml_collections.ConfigDict(tree))


def test_a_batch_larger_than_a_tasks_training_data_is_refused():
  """data_limit 40 at the default 64 sequences (64 SST sentences a batch, from 40), or 500
  on 80 rows: every batch repeated its examples, silently. Refused, naming the key, the
  tasks and their sizes, and the largest value that fits."""
  schedules.check_batch_sizes(_schedule("all_tasks", sizes=(64, 32, 32), seqs=64))  # Fits.
  with pytest.raises(DataError) as e:
    schedules.check_batch_sizes(_schedule("all_tasks", sizes=(40, 40, 40), seqs=64))
  assert str(e.value) == (
    "train.seqs_per_task=64 puts more examples of a task in each batch than it has (sst has "
    "40 training examples per epoch, a batch takes 64): every batch would repeat examples; "
    "use train.seqs_per_task=40 or less (or raise config.data_limit or train.epoch_examples)"
  )
  with pytest.raises(DataError, match=r"\(sst has 80 .* takes 500; quora has 80 .* takes 250; "):
    schedules.check_batch_sizes(_schedule("sqrt", sizes=(80, 80, 80), seqs=500))
  with pytest.raises(DataError, match="quora has 6 training examples per epoch, a batch takes 32"):
    schedules.check_batch_sizes(_schedule("all_tasks", caps=(0, 6, 0)))  # train.epoch_examples.


def test_train_schedule_from_config():
  config = default_config_with(
    **{
      "train.schedule": "sqrt",
      "train.epoch_examples.quora": 20_000,
      "train.steps": 5000,
      "seed": 3,
    }
  )
  s = run_spec.train_schedule(config, (8544, 141_000, 6040))
  assert s == schedules.Schedule(
    "sqrt", (8544, 20_000, 6040), 64, 5000, 3, 0, (), config.train.token_balancing
  )
  assert s.balance_steps == 16
  saved = json.loads(
    default_config_with().to_json_best_effort()
  )  # Written before the keys existed:
  del saved["train"]["schedule"], saved["train"]["epoch_examples"]
  old = upgrade.upgrade(saved)
  run_spec.build(old)
  assert run_spec.train_schedule(old, (10, 20, 30)) == schedules.Schedule(
    "all_tasks", (10, 20, 30), 64, 300, 0, 0, (), 16
  )


def test_resume_refuses_a_changed_schedule_and_accepts_configs_saved_before_it():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["train"]["schedule"], saved["train"]["epoch_examples"]
  assert resume.resume_mismatches(saved, default.get_config()) == []
  changed = default.get_config()
  changed.train.schedule = "sqrt"
  changed.train.epoch_examples.quora = 20_000
  assert resume.resume_mismatches(saved, changed) == [
    ("train.epoch_examples.quora", 0, 20_000),
    ("train.schedule", "all_tasks", "sqrt"),
  ]


# --------------------------------------------------------------------------
# The one-task train step
# --------------------------------------------------------------------------


def test_one_task_step_is_a_step_on_that_task_alone(tiny_bert_dir):
  """Quora's gradient alone, in its row of the zero stack, through sum -> clip -> AdamW: the
  same parameters as AdamW on Quora's gradient; its loss and index as metrics."""
  config = tiny_config(tiny_bert_dir, schedule="round_robin", warmup_fraction=0.0)
  config.grad.method = "sum"
  model, state, frozen, tx = train.init_state(run_spec.build(config))
  rng = np.random.default_rng(0)
  s, length = 8, 16
  batch = {
    "input_ids": rng.integers(5, 100, (1, s, length)).astype(np.int32),
    "attention_mask": np.ones((1, s, length), np.int32),
    "token_type_ids": np.zeros((1, s, length), np.int32),
    "labels": rng.integers(0, 2, (1, s)).astype(np.float32),
    "weights": np.ones((1, s), np.float32),
    "task": np.asarray(1, np.int32),
  }
  new_state, metrics = jax.jit(make_train_step(model, tx, (0, 1, 2), config.seed))(
    state, frozen, batch
  )

  base = run_spec.base_optimizer(config)

  @jax.jit  # Eagerly, the reference would take longer than the step's compilation.
  def quora_alone(trainable, inputs):
    key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0), 3)[1]
    loss, grads = jax.value_and_grad(make_loss_fn(model))(trainable, frozen, inputs, 1, key)
    updates, _ = base.update(grads, base.init(trainable), trainable)
    return loss, jax.tree.map(jnp.add, trainable, updates)

  loss, expected = quora_alone(state.trainable, {k: v[0] for k, v in batch.items() if k != "task"})
  for a, b in zip(jax.tree.leaves(new_state.trainable), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert float(metrics["l2_updates"]) > 0
  assert int(metrics["task"]) == 1
  assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
  assert not any(k.startswith("grad/") for k in metrics) and "task_loss" not in metrics


# --------------------------------------------------------------------------
# End to end: metrics, and an interrupted run resumes bit for bit
# --------------------------------------------------------------------------


def _one_task_config(model_dir):
  """Annealed over 2 epochs of 7 steps (B = SST 2, Quora 2 (capped at 6), STS 3), fixed weights."""
  config = tiny_config(model_dir, schedule="annealed", steps=12, checkpoint_every=4)
  config.data_limit = 12
  config.train.length_buckets = (32,)  # One bucket: fewer step shapes to compile.
  config.train.epoch_examples.quora = 6
  config.grad.method = "fixed"
  config.grad.kwargs.weights = (1.0, 0.5, 2.0)
  config.eval.write_predictions = False
  return config


@needs_data
def test_one_task_schedule_run_resumes_to_the_same_parameters(tiny_bert_dir, tmp_path, monkeypatch):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  results = train.train_and_evaluate(_one_task_config(tiny_bert_dir), straight)
  assert np.isfinite(results["overall"])
  s = run_spec.train_schedule(_one_task_config(tiny_bert_dir), (12, 12, 12))
  assert schedules.steps_per_epoch(s) == 7 and schedules.num_epochs(s) == 2
  rows = [r for r in read_metrics(straight) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, 13))
  for r in rows:  # The trained task and its loss; no NaN, no between-task statistics.
    task = TASKS[schedules.step_task(s, r["step"] - 1)[0]]
    assert r["task"] == task and r[f"task_loss/{task}"] == r["loss"] and np.isfinite(r["loss"])
    assert not any(k.startswith(("grad/", "task_loss/")) and k != f"task_loss/{task}" for k in r)

  with monkeypatch.context() as m:
    interrupt_at(m, 9)  # Epoch 2.
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(_one_task_config(tiny_bert_dir), resumed)
  assert Checkpointer(resumed, 1, 1).latest_step() == 9
  _clear_caches()  # The resumed run derives each task's stream position afresh.
  train.train_and_evaluate(_one_task_config(tiny_bert_dir), resumed)

  assert_same_run(_one_task_config(tiny_bert_dir), straight, resumed, 12)
