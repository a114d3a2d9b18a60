"""Task-specific copies of shared parameter groups (mtl_jax.models.task_specific,
adapter.task_specific / adapter.task_specific_top).

References: the shared model itself (identical copies must give its outputs and its
per-task gradients exactly), plain autodiff through the stacked copies (each task's
gradient must be its own slice's only), and parameter counts from the model's config.json
dimensions by hand."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_npz, needs_data, tiny_config
from flax import traverse_util

from mtl_jax import grad as mtlgrad
from mtl_jax import step, train
from mtl_jax.config import ConfigError, resume, run_spec, upgrade
from mtl_jax.data import batching, packing
from mtl_jax.data.batching import Encoded
from mtl_jax.evaluate import make_predict_fn
from mtl_jax.models import adapters, hf_io, multitask, task_specific
from mtl_jax.tasks import TASKS
from mtl_jax.tools import embed, export

T = 3
KEY = task_specific.KEY
S = 16  # Sequences per task batch.
PLAN = packing.PackPlan((32, 64))
SLOTS = packing.PackPlan((32, 64), slots=(2, 2, 1))  # Lanes: SST and Quora over two each.


def _lora(mode):
  return adapters.LoraConfig(kind=mode, rank=4, alpha=8.0) if mode in adapters.KINDS else None


@functools.cache
def _shared(tiny_bert_dir, mode):
  """The shared model with every leaf perturbed (adapters' B = 0 and the heads matter).
  The forward and gradient tests pass the one-layer model (`one_layer_bert_dir`): a copy
  of layer 0 is read as one of layer 1 would be, with half the compilation."""
  model, params = multitask.build(
    multitask.ModelSpec(tiny_bert_dir, mode, _lora(mode)), jax.random.key(0)
  )
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params
  )
  return model, params


def _copied(tiny_bert_dir, mode, groups):
  """(model, shared params, the same params with `groups` copied per task)."""
  model, params = _shared(tiny_bert_dir, mode)
  return model, params, multitask._copy_groups(params, groups, mode, len(TASKS))


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _datasets(seed=0):
  rng = np.random.default_rng(seed)

  def seq():
    return np.asarray([2, *rng.integers(5, 100, rng.integers(1, 18)), 3], np.int32)

  out = []
  for task in ("sst", "quora", "sts"):
    n = 40
    labels = (rng.integers(0, 5, n) if task == "sst" else rng.uniform(0, 1, n) * 5).astype(
      np.float32
    )
    if task == "quora":
      labels = (labels > 2.5).astype(np.float32)
    second = None if task == "sst" else [seq() for _ in range(n)]
    out.append(
      Encoded(
        task, "train", [f"{task}{i}" for i in range(n)], [seq() for _ in range(n)], second, labels
      )
    )
  return out


def _batch(plan):
  return batching.train_batch(_datasets(), 0, S, 0, (16, 32, 64), plan=plan)


# -------------------------------------------------------------------------------------
# Parameters: where the copies live, what trains, what is shared, how many
# -------------------------------------------------------------------------------------


def _dims():
  """The tiny model's sizes, read from its config.json (not from mtl_jax)."""
  hf = json.loads(str(load_npz("tiny_bert.npz")["config_json"]))
  return (
    hf["hidden_size"],
    hf["intermediate_size"],
    hf["vocab_size"],
    hf["max_position_embeddings"],
    hf["type_vocab_size"],
  )


def _group_sizes():
  h, f, v, p, types = _dims()
  attention = 4 * (h * h + h) + 2 * h  # Q, K, V, output dense; LayerNorm scale + bias.
  ffn = (h * f + f) + (f * h + h) + 2 * h  # Intermediate, output dense; LayerNorm.
  embeddings = (v + p + types) * h + 2 * h  # Three tables; LayerNorm.
  return {"attention": attention, "ffn": ffn, "embeddings": embeddings}


def _built(tiny_bert_dir, mode, groups=(), top=0):
  spec = multitask.ModelSpec(
    tiny_bert_dir, mode, _lora(mode), task_specific=groups, task_specific_top=top
  )
  _, params = multitask.build(spec, jax.random.key(0))
  return multitask.split(params, multitask.trainable_mask(params, mode))


def test_parameter_counts_grow_by_the_copies(tiny_bert_dir):
  size = _group_sizes()
  h = _dims()[0]
  trainable, frozen = _built(tiny_bert_dir, "full")
  base = multitask.count(trainable) + multitask.count(frozen)
  # layer_0.attention named, plus both groups of the top 1 of the 2 layers.
  trainable, frozen = _built(tiny_bert_dir, "full", ("layer_0.attention",), 1)
  extra = (T - 1) * (2 * size["attention"] + size["ffn"])
  assert multitask.count(trainable) + multitask.count(frozen) == base + extra
  assert multitask.count(frozen) == 0

  # LoRA r=4 on query and value: the copies are the adapters, the base stays frozen.
  lora_t, lora_f = _built(tiny_bert_dir, "lora")
  t, f = _built(tiny_bert_dir, "lora", ("layer_1.attention",))
  assert multitask.count(f) == multitask.count(lora_f)
  assert multitask.count(t) == multitask.count(lora_t) + (T - 1) * 2 * 4 * (h + h)

  # Probe: the chosen group trains, one copy per task; the rest stays frozen.
  t, f = _built(tiny_bert_dir, "probe", ("embeddings",))
  assert multitask.count(t[KEY]) == T * size["embeddings"]
  assert "embeddings" not in f["encoder"]
  assert multitask.count(f) == base - size["embeddings"] - multitask.count(t["heads"])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_copies_are_trainable_not_shared_and_in_no_group(tiny_bert_dir, mode):
  trainable, frozen = _built(tiny_bert_dir, mode, ("layer_1.attention",))
  copies = {p: v for p, v in _flat(trainable).items() if p[0] == KEY}
  assert copies and all(v.shape[0] == T for v in copies.values())
  assert all(("lora" in p) == (mode == "lora") for p in copies)
  shared, groups = _flat(multitask.is_shared(trainable)), _flat(multitask.param_groups(trainable))
  assert not any(shared[p] for p in copies) and all(groups[p] is None for p in copies)
  assert "layer_1.attention" not in set(groups.values())  # Nothing shared is left there.
  assert "layer_1.ffn" in set(groups.values()) or mode == "lora"
  encoder = _flat(trainable["encoder"]) | _flat(frozen.get("encoder", {}))
  assert not any(p[:2] == ("layer_1", "attention") and "lora" in p for p in encoder)
  if mode == "lora":  # The pretrained base of the group: once, frozen.
    kernel = _flat(frozen)[("encoder", "layer_1", "attention", "query", "kernel")]
    assert kernel.ndim == 2


# -------------------------------------------------------------------------------------
# Forward: identical copies are the shared model; each task runs with its own copy
# -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "dora"])
def test_identical_copies_give_the_shared_models_outputs(one_layer_bert_dir, mode):
  """To float32 rounding (rtol 1e-6): a copy read by a gather is another XLA program,
  which may fuse and order the same sums differently (2e-7 seen)."""
  groups = ("embeddings", "layer_0.ffn") if mode == "full" else ("layer_0.attention",)
  model, shared, copied = _copied(one_layer_bert_dir, mode, groups)
  assert KEY in copied
  predict = make_predict_fn(model)
  unpacked = _batch(None)
  for t in range(T):
    batch = {k: v[t] for k, v in unpacked.items()}
    want = predict(shared, batch, t)
    got = predict(copied, batch, t)
    for name in want:
      np.testing.assert_allclose(
        np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-6
      )
  # A change to task 1's copy changes task 1's outputs only.
  flat = _flat(copied)
  rng = np.random.default_rng(2)
  for p in [p for p in flat if p[0] == KEY]:
    flat[p] = flat[p].at[1].add(0.3 * rng.standard_normal(flat[p].shape[1:]).astype(np.float32))
  changed = traverse_util.unflatten_dict(flat)
  for t in range(T):
    batch = {k: v[t] for k, v in unpacked.items()}
    a, b = predict(changed, batch, t), predict(shared, batch, t)
    differs = any(not np.allclose(a[n], b[n], atol=1e-4) for n in a)
    assert differs == (t == 1), t
  with pytest.raises(ValueError, match="give the task"):
    task_specific.task_params(copied, None)


# -------------------------------------------------------------------------------------
# Gradients: each task's copy gets its own task's gradient, and only it
# -------------------------------------------------------------------------------------


def _optimizer(trainable, method, inner):
  return optax.chain(
    mtlgrad.shared_only(method, multitask.is_shared(trainable), multitask.own_slices(trainable)),
    inner,
  )


def _state(trainable, tx):
  return step.TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))


@pytest.mark.parametrize(
  "mode, groups, plan",
  [("full", ("embeddings", "layer_0.ffn"), SLOTS), ("lora", ("layer_0.attention",), PLAN)],
)
def test_each_copy_gets_and_is_updated_by_its_own_tasks_gradient(
  one_layer_bert_dir, mode, groups, plan
):
  """Packed batches (with lanes: SST and Quora over two each); under full fine-tuning the
  word-embedding table is among the copies (its gradient comes from the lanes' word
  vectors, `step.make_per_task_grads`)."""
  model, shared, copied = _copied(one_layer_bert_dir, mode, groups)
  batch, keys = _batch(plan), step.dropout_keys(0, 0, T)
  per_task = jax.jit(step.make_per_task_grads(model))

  def grads_of(params):
    trainable, frozen = multitask.split(params, multitask.trainable_mask(params, mode))
    return trainable, frozen, per_task(trainable, frozen, batch, jnp.arange(T), keys)

  _, _, (loss_s, grad_s) = grads_of(shared)
  trainable, frozen, (loss_c, grad_c) = grads_of(copied)
  np.testing.assert_allclose(loss_c, loss_s, rtol=1e-6)
  flat_s, flat_c = _flat(grad_s), _flat(grad_c)
  copies = [p for p in flat_c if p[0] == KEY]
  assert copies
  for path, g in flat_c.items():
    # Identical copies: row t of a copy's gradient is task t's gradient of the shared leaf.
    want = flat_s[("encoder", *path[1:])] if path[0] == KEY else flat_s[path]
    assert g.shape == want.shape, path
    np.testing.assert_allclose(g, want, atol=1e-6, rtol=1e-4, err_msg=str(path))
  assert all(float(jnp.abs(flat_c[p]).max()) > 1e-6 for p in copies)

  # Plain autodiff through the stack (the loss selects each lane's copy itself): task t's
  # gradient of the [T, ...] copies is row t, and zero in every other row.
  lane_tasks, lane_keys, _ = step.lanes(batch, jnp.arange(T), keys)
  loss_grad = jax.jit(jax.value_and_grad(step.make_loss_fn(model)))
  want = [None] * T
  for k, t in enumerate(np.asarray(lane_tasks)):
    lane = {name: v[k] for name, v in batch.items()}
    _, g = loss_grad(trainable, frozen, lane, lane_tasks[k], lane_keys[k])
    want[t] = g if want[t] is None else jax.tree.map(jnp.add, want[t], g)
  for t in range(T):
    flat_w = _flat(want[t])
    for p in copies:
      np.testing.assert_allclose(flat_c[p][t], flat_w[p][t], atol=1e-6, rtol=1e-4)
      assert not np.asarray(np.delete(flat_w[p], t, axis=0)).any(), p

  # An all-tasks step with PCGrad and SGD(1): a copy moves by its own task's gradient,
  # whatever the method does to the shared leaves.
  tx = _optimizer(trainable, mtlgrad.pcgrad(), optax.sgd(1.0))
  new, _ = jax.jit(step.make_train_step(model, tx, (0, 1, 2), 0))(
    _state(trainable, tx), frozen, batch
  )
  before, after = _flat(trainable), _flat(new.trainable)
  for p in copies:
    np.testing.assert_allclose(after[p] - before[p], -flat_c[p], atol=1e-6, rtol=1e-5)
  if mode == "lora":  # Each task's own adapter there: the B factors now differ by task.
    b = np.asarray(new.trainable[KEY]["layer_0"]["attention"]["query"]["lora"]["b"])
    assert not np.allclose(b[0], b[1]) and not np.allclose(b[1], b[2])


def test_a_one_task_step_changes_that_tasks_copy_only(one_layer_bert_dir):
  model, _, params = _copied(one_layer_bert_dir, "full", ("layer_0.ffn",))
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, "full"))
  tx = _optimizer(trainable, mtlgrad.sum_tasks(), optax.adamw(1e-2, weight_decay=0.0))
  one = batching.train_batch([_datasets()[1]], 0, S, 0, (16, 32, 64))  # Quora alone.
  new, _ = jax.jit(step.make_train_step(model, tx, (0, 1, 2), 0))(
    _state(trainable, tx), frozen, {**one, "task": jnp.asarray(1, jnp.int32)}
  )
  before, after = _flat(trainable), _flat(new.trainable)
  copies = [p for p in before if p[0] == KEY]
  assert copies
  for p in copies:
    np.testing.assert_array_equal(after[p][0], before[p][0])
    np.testing.assert_array_equal(after[p][2], before[p][2])
    assert not np.array_equal(after[p][1], before[p][1]), p


# -------------------------------------------------------------------------------------
# The config boundary, old configs, a run end to end
# -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides, key, message",
  [
    ({"task_specific": ("layer_2.attention",)}, "adapter.task_specific", "unknown groups"),
    ({"task_specific": ("layer_1.mlp",)}, "adapter.task_specific", "unknown groups"),
    ({"task_specific_top": 3}, "adapter.task_specific_top", "more than the 2"),
    ({"task_specific_top": -1}, "adapter.task_specific_top", "integer >= 0"),
    ({"task_specific": ("layer_1.ffn",)}, "adapter.task_specific", "hold no adapter"),
    ({"task_specific": ("embeddings",)}, "adapter.task_specific", "hold no adapter"),
    ({"task_specific_top": 1, "layers": (0,)}, "adapter.task_specific_top", "hold no adapter"),
    (
      {"task_specific": ("layer_1.attention",), "layers": (0,)},
      "adapter.task_specific",
      "hold no adapter",
    ),
  ],
)
def test_config_errors_name_the_key(tiny_bert_dir, overrides, key, message):
  config = tiny_config(tiny_bert_dir)  # adapter.kind=lora on query and value.
  config.adapter.update(overrides)
  with pytest.raises(ConfigError, match=f"config.{key}: .*{message}"):
    run_spec.build(config)


def test_valid_choices_build(tiny_bert_dir):
  config = tiny_config(tiny_bert_dir)
  config.adapter.task_specific = ("layer_1.attention",)
  assert run_spec.build(config).model.task_specific == ("layer_1.attention",)
  # Under LoRA on query and value the top layers' copies are their attention adapters.
  lora = adapters.LoraConfig(targets=("query", "value"))
  assert multitask.task_specific_groups((), 2, 2, lora) == (
    "layer_0.attention",
    "layer_1.attention",
  )
  config.adapter.task_specific, config.adapter.task_specific_top = (), 2
  run_spec.build(config)
  config.adapter.kind = "full"
  config.adapter.task_specific = ("embeddings", "layer_0.ffn")
  config.adapter.task_specific_top = 2
  assert run_spec.build(config).model.task_specific_top == 2
  assert multitask.task_specific_groups(("layer_0.ffn", "embeddings"), 1, 2) == (
    "embeddings",
    "layer_0.ffn",
    "layer_1.attention",
    "layer_1.ffn",
  )


def test_configs_saved_before_the_keys_load_and_resume(tiny_bert_dir):
  config = tiny_config(tiny_bert_dir, steps=2)
  saved = json.loads(config.to_json_best_effort())
  del saved["adapter"]["task_specific"], saved["adapter"]["task_specific_top"]
  assert resume.resume_mismatches(saved, config) == []
  old = upgrade.upgrade(saved)
  assert (old.adapter.task_specific, old.adapter.task_specific_top) == ((), 0)
  config.adapter.task_specific_top = 1
  assert [k for k, _, _ in resume.resume_mismatches(saved, config)] == ["adapter.task_specific_top"]


@needs_data
def test_a_run_with_task_specific_top_layers_end_to_end(tiny_bert_dir, tmp_path):
  config = tiny_config(tiny_bert_dir, steps=2, learning_rate=1e-2)
  config.adapter.kind = "full"
  config.adapter.task_specific_top = 1
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["overall"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = {k for line in f for k in json.loads(line)}
  groups = {k.split("/")[1] for k in logged if k.startswith("group_cos/")}
  assert groups == {"embeddings", "layer_0.attention", "layer_0.ffn"}  # Layer 1 is per task.

  # One encoder per task: embed needs the task; export writes the chosen task's.
  model, params, tokenizer = embed.load_encoder(None, workdir, None)
  with pytest.raises(ValueError, match="give the task"):
    embed.embed(model, params, tokenizer, ["a good movie"], None, 16)
  out = {
    t: embed.embed(model, params, tokenizer, ["a good movie"], None, 16, task=t)
    for t in ("sst", "sts")
  }
  assert not np.allclose(out["sst"]["pooled"], out["sts"]["pooled"])
  with pytest.raises(export.ExportError, match="--task"):
    export.export(workdir, str(tmp_path / "export"))
  info = export.export(workdir, str(tmp_path / "export"), task="sts")
  assert info["task"] == "sts"
  _, exported = hf_io.load_bert(str(tmp_path / "export"))
  want = _flat(jax.device_get(task_specific.task_params(params, 2)["encoder"]))
  for p, v in _flat(exported).items():
    np.testing.assert_allclose(v, want[p], atol=1e-6, err_msg=str(p))
