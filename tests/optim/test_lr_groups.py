"""mtl_jax.optim.lr_groups: learning rates per parameter group (train.head_lr_multiplier,
train.layer_lr_decay), against a hand-written table of the tiny 2-layer BERT and against
plain AdamW run at learning rate x multiplier on each leaf alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from flax import traverse_util

from mtl_jax import train
from mtl_jax.config import run_spec
from mtl_jax.optim import lr_groups

HEAD, DECAY = 10.0, 0.5  # The tiny BERT has L = 2 layers: embeddings 0.5^3, layer i 0.5^(2-i).

# Path prefix -> multiplier, written by hand from the convention (lr_groups' docstring).
TABLES = {
  "full": {
    "encoder/embeddings": 0.125,
    "encoder/layer_0": 0.25,
    "encoder/layer_1": 0.5,
    "heads": HEAD,
  },
  # DoRA factors under the denses they adapt; PALs, their projections, the concat
  # pooling's dense and the uncertainty log-variances are task-specific: HEAD.
  "dora+pals": {
    "encoder/layer_0/attention": 0.25,
    "encoder/layer_1/attention": 0.5,
    "encoder/layer_0/task_layer": HEAD,
    "encoder/layer_1/task_layer": HEAD,
    "encoder/task_proj": HEAD,
    "heads": HEAD,
    "loss_weighting": HEAD,
  },
  # LoRA on the top layer only: its exponent counts the model's 2 layers, not the adapted 1.
  "lora top layer": {"encoder/layer_1/attention": 0.5, "heads": HEAD},
}


def _config(model_dir: str, variant: str, **train_overrides):
  config = tiny_config(model_dir, grad_clip=0.0, **train_overrides)
  config.grad.method = "sum"
  if variant == "full":
    config.adapter.kind = "full"
  elif variant == "dora+pals":
    config.adapter.kind = "dora"
    config.adapter.task_layers = "pals"
    config.model.pooling = "concat"
    config.train.loss_weighting = "uncertainty"
  else:
    config.adapter.layers = (1,)
  return config


@functools.cache  # Building the model is the slow part; the tests share its trainable leaves.
def _trainable(model_dir: str, variant: str) -> dict:
  return train.init_state(run_spec.build(_config(model_dir, variant)))[1].trainable


def _random_grads(rng, params: dict) -> dict:
  """Per-task gradients [3, ...] of `params`."""
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(3, *p.shape)), p.dtype), params)


@pytest.mark.parametrize("variant", list(TABLES))
def test_multipliers_of_the_tiny_bert_match_the_hand_written_table(tiny_bert_dir, variant):
  trainable = _trainable(tiny_bert_dir, variant)
  tree = lr_groups.multipliers(trainable, 2, head=HEAD, layer_decay=DECAY)
  table, used = TABLES[variant], set()
  flat = traverse_util.flatten_dict(tree, sep="/")
  assert flat.keys() == traverse_util.flatten_dict(trainable, sep="/").keys()
  for path, m in flat.items():
    (prefix,) = [p for p in table if path.startswith(p + "/")]
    assert m == table[prefix], path
    used.add(prefix)
  assert used == set(table)  # Every row of the table names leaves.


def test_each_leaf_is_updated_as_adamw_at_its_multiplied_learning_rate(tiny_bert_dir):
  """Three steps of the configured optimizer (grad.method sum: the combined gradient is the
  sum over tasks) against optax.adamw on each leaf alone, with the warmup-cosine schedule
  times the table's multiplier."""
  steps, lr, wd, variant = 3, 1e-2, 0.1, "full"
  config = _config(
    tiny_bert_dir,
    variant,
    steps=steps,
    learning_rate=lr,
    weight_decay=wd,
    warmup_fraction=0.34,  # One warmup step.
    head_lr_multiplier=HEAD,
    layer_lr_decay=DECAY,
  )
  params = _trainable(tiny_bert_dir, variant)
  tx = run_spec.build(config).optimizer(params)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  flat_params = traverse_util.flatten_dict(params, sep="/")
  table = TABLES[variant]
  refs = {}
  for path in flat_params:
    (prefix,) = [p for p in table if path.startswith(p + "/")]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, 1, steps, end_value=lr * 0.01)
    ref_tx = optax.adamw(lambda c, m=table[prefix], s=schedule: m * s(c), weight_decay=wd)
    refs[path] = (ref_tx, ref_tx.init(flat_params[path]))
  for _ in range(steps):
    grads = _random_grads(rng, params)
    updates, state = tx.update(grads, state, params)
    flat_updates = traverse_util.flatten_dict(updates, sep="/")
    flat_grads = traverse_util.flatten_dict(grads, sep="/")
    for path, p in traverse_util.flatten_dict(params, sep="/").items():
      ref_tx, ref_state = refs[path]
      expected, ref_state = ref_tx.update(flat_grads[path].sum(0), ref_state, p)
      refs[path] = (ref_tx, ref_state)
      np.testing.assert_allclose(flat_updates[path], expected, rtol=2e-5, atol=1e-9, err_msg=path)
    params = optax.apply_updates(params, updates)


def test_the_multipliers_apply_after_the_gradient_method_combines_the_tasks(tiny_bert_dir):
  """With PCGrad (projections between tasks) and the same gradients and params, every
  leaf's update is its table multiplier times the update without multipliers."""
  variant = "lora top layer"  # Few leaves: a small step to compile.
  base = _config(tiny_bert_dir, variant, steps=2)
  scaled = _config(tiny_bert_dir, variant, steps=2, head_lr_multiplier=HEAD, layer_lr_decay=DECAY)
  base.grad.method = scaled.grad.method = "pcgrad"
  params = _trainable(tiny_bert_dir, variant)
  txs = [run_spec.build(c).optimizer(params) for c in (base, scaled)]
  states = [tx.init(params) for tx in txs]
  updates = [jax.jit(tx.update) for tx in txs]
  rng = np.random.default_rng(1)
  for _ in range(2):
    grads = _random_grads(rng, params)
    out = [update(grads, s, params) for update, s in zip(updates, states)]
    states = [s for _, s in out]
    plain, multiplied = (traverse_util.flatten_dict(u, sep="/") for u, _ in out)
    for path, u in plain.items():
      (prefix,) = [p for p in TABLES[variant] if path.startswith(p + "/")]
      np.testing.assert_allclose(
        multiplied[path], TABLES[variant][prefix] * u, rtol=1e-6, atol=1e-12, err_msg=path
      )


def test_off_adds_nothing_to_the_optimizer_state(tiny_bert_dir):
  """At their defaults (1) the optimizer state is the chain runs before them saved, so
  their checkpoints restore; on, one stateless entry is appended."""
  off = _config(tiny_bert_dir, "full")
  on = _config(tiny_bert_dir, "full", layer_lr_decay=0.9)
  params = _trainable(tiny_bert_dir, "full")
  state_off, state_on = (run_spec.build(c).optimizer(params).init(params) for c in (off, on))
  assert len(state_off) == 3  # grad method, clip, adamw.
  assert jax.tree.structure(state_on[:3]) == jax.tree.structure(state_off)
  assert state_on[3] == optax.EmptyState()
