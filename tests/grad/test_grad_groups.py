"""Per-group gradient geometry (issue 31): the groups' Gram matrices add up to the global
one, and the groups of the tiny BERT are named as `multitask.param_group` documents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import default_config_with
from flax import traverse_util

from mtl_jax import grad as mtlgrad
from mtl_jax import train
from mtl_jax.config import run_spec
from mtl_jax.grad import _tree
from mtl_jax.models import multitask

T = 3


def stacked_like(tree, seed=0):
  """Random per-task gradients [T, *leaf.shape] with the structure of `tree`."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef, [jax.random.normal(k, (T, *jnp.shape(x))) for k, x in zip(keys, leaves)]
  )


def tiny_trainable(tiny_bert_dir, **overrides):
  config = default_config_with(**{"model.path": tiny_bert_dir, "model.max_length": 32, **overrides})
  _, state, _, _ = train.init_state(run_spec.build(config))
  return state.trainable


def test_group_grams_sum_to_the_global_gram_on_a_literal_tree():
  grads = {"a": {"w": jnp.arange(12.0).reshape(T, 4), "b": -jnp.ones((T, 2, 2))}, "c": jnp.eye(T)}
  labels = {"a": {"w": "x", "b": "y"}, "c": "x"}
  grams = _tree.gram_groups(grads, labels)
  assert sorted(grams) == ["x", "y"]
  g = np.concatenate([np.asarray(x).reshape(T, -1) for x in jax.tree.leaves(grads)], axis=1)
  np.testing.assert_allclose(sum(grams.values()), g @ g.T, rtol=1e-6)
  x = np.concatenate([np.asarray(grads["a"]["w"]), np.asarray(grads["c"])], axis=1)
  np.testing.assert_allclose(grams["x"], x @ x.T, rtol=1e-6)
  # A leaf labelled None is left out; a callable labelling works alike.
  only_y = _tree.gram_groups(grads, lambda t: {"a": {"w": None, "b": "y"}, "c": None})
  np.testing.assert_allclose(only_y["y"], grams["y"])
  assert list(only_y) == ["y"]


@pytest.mark.parametrize(
  "overrides, expected",
  [
    (
      {"adapter.kind": "full"},
      ["embeddings", "layer_0.attention", "layer_0.ffn", "layer_1.attention", "layer_1.ffn"],
    ),
    (
      {"adapter.kind": "lora", "adapter.task_layers": "pals"},
      ["layer_0.attention", "layer_1.attention"],
    ),
    (
      {"adapter.kind": "lora", "adapter.targets": ("query", "intermediate", "output")},
      ["layer_0.attention", "layer_0.ffn", "layer_1.attention", "layer_1.ffn"],
    ),
  ],
)
def test_tiny_bert_groups_and_their_sum(tiny_bert_dir, overrides, expected):
  trainable = tiny_trainable(tiny_bert_dir, **overrides)
  labels = multitask.param_groups(trainable)
  flat = traverse_util.flatten_dict(labels)
  shared = traverse_util.flatten_dict(multitask.is_shared(trainable))
  assert {p for p, g in flat.items() if g is not None} == {p for p, s in shared.items() if s}
  for path, group in flat.items():
    if group is None:
      continue
    layer_part = path[2] if len(path) > 2 else ""
    if group.endswith(".attention"):
      assert layer_part in ("attention", "attention_norm"), path
    elif group.endswith(".ffn"):
      assert layer_part in ("intermediate", "output", "output_norm"), path
    else:
      assert group == "embeddings" and path[1] == "embeddings", path
  grads = stacked_like(trainable)
  groups, overall = jax.jit(lambda g: mtlgrad.group_gradient_stats(g, multitask.param_groups))(
    grads
  )
  assert sorted(groups, key=multitask.group_sort_key) == expected
  shared_grads = jax.tree.map(lambda g, s: g if s else None, grads, multitask.is_shared(grads))
  global_gram = _tree.gram_tree(shared_grads)
  grams = _tree.gram_groups(grads, labels)
  np.testing.assert_allclose(sum(grams.values()), global_gram, rtol=1e-5)
  want = mtlgrad.task_gradient_stats(shared_grads)
  np.testing.assert_allclose(overall["cosine"], want["cosine"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(overall["grad_norm"], want["grad_norm"], rtol=1e-5)
  for name, s in groups.items():
    norm = np.sqrt(np.diag(np.asarray(grams[name])))
    np.testing.assert_allclose(s["grad_norm"], norm, rtol=1e-5)


def test_group_metrics_names():
  groups = {"layer_0.ffn": {"grad_norm": jnp.ones(3), "cosine": jnp.eye(3) - 0.5}}
  from mtl_jax.step import group_metrics

  m = group_metrics(groups, ["sst", "quora", "sts"])
  assert sorted(m) == [
    "group_cos/layer_0.ffn/quora-sts",
    "group_cos/layer_0.ffn/sst-quora",
    "group_cos/layer_0.ffn/sst-sts",
    "group_norm/layer_0.ffn",
  ]
  assert float(m["group_cos/layer_0.ffn/sst-sts"]) == -0.5
