"""grad.group_scoped: a method on each parameter group alone (grad.scope="group")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mtl_jax import grad as mtlgrad

T = 3

# Methods whose group-scoped update must be the method on each group alone.
SCOPED = {
  "pcgrad": lambda: mtlgrad.pcgrad(seed=1),
  "cagrad": lambda: mtlgrad.cagrad(c=0.4),
  "mgda": lambda: mtlgrad.mgda(),
  "upgrad": lambda: mtlgrad.upgrad(),
  "imtl_g": lambda: mtlgrad.imtl_g(),
  "gradvac": lambda: mtlgrad.gradvac(num_tasks=T),
  "nash_mtl": lambda: mtlgrad.nash_mtl(num_tasks=T),
  "sum": lambda: mtlgrad.sum_tasks(),
}


def random_stack(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef, [jax.random.normal(k, (T, *jnp.shape(x))) for k, x in zip(keys, leaves)]
  )


def subtree(tree, labels, group):
  """The leaves of `tree` labelled `group`, as a flat {path: leaf} dict."""
  flat, lab = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(labels)
  return {p: x for p, x in flat.items() if lab[p] == group}


def check_scoped_equals_per_group(name, params, labels, steps=2, wrap=lambda tx: tx):
  tx = wrap(mtlgrad.group_scoped(SCOPED[name], labels))
  state = tx.init(params)
  groups = sorted({g for g in traverse_util.flatten_dict(labels).values() if g is not None})
  alone = {g: SCOPED[name]() for g in groups}
  alone_states = {g: alone[g].init(subtree(params, labels, g)) for g in groups}
  for step in range(steps):  # Several steps: stateful methods keep a state per group.
    grads = random_stack(params, step)
    out, state = tx.update(grads, state, params)
    out = traverse_util.flatten_dict(out)
    for g in groups:
      want, alone_states[g] = alone[g].update(
        subtree(grads, labels, g), alone_states[g], subtree(params, labels, g)
      )
      for path, w in want.items():
        np.testing.assert_allclose(out[path], w, rtol=1e-5, atol=1e-6, err_msg=f"{name} {path}")
  return out


@pytest.mark.parametrize("name", sorted(SCOPED))
def test_group_scoped_is_the_method_on_each_group_alone(name):
  params = {"enc": {"a": jnp.zeros((4, 3)), "b": jnp.zeros(5)}, "emb": jnp.zeros((2, 6))}
  labels = {"enc": {"a": "g1", "b": "g2"}, "emb": "g1"}
  check_scoped_equals_per_group(name, params, labels)


def test_group_scoped_differs_from_global_pcgrad():
  params = {"a": jnp.zeros(4), "b": jnp.zeros(4)}
  grads = {
    "a": jnp.array([[1.0, 0, 0, 0], [-1.0, 1, 0, 0], [0.0, 0, 1, 0]]),
    "b": jnp.array([[0.0, 1, 0, 0], [0.0, 1, 0, 0], [1.0, -1, 0, 0]]),
  }
  scoped = mtlgrad.group_scoped(mtlgrad.pcgrad, {"a": "x", "b": "y"})
  out_s, _ = scoped.update(grads, scoped.init(params), params)
  tx = mtlgrad.pcgrad()
  out_g, _ = tx.update(grads, tx.init(params), params)
  assert not np.allclose(out_s["a"], out_g["a"])


def test_unlabelled_leaves_get_the_task_sum_and_extra_args_pass():
  params = {"a": jnp.zeros(4), "head": jnp.zeros(2)}
  grads = random_stack(params, 0)
  tx = mtlgrad.group_scoped(lambda: mtlgrad.dwa(num_tasks=T, period=1), {"a": "x", "head": None})
  out, state = tx.update(grads, tx.init(params), params, task_losses=jnp.ones(T))
  np.testing.assert_allclose(out["head"], grads["head"].sum(0), rtol=1e-6)
  np.testing.assert_allclose(out["a"], grads["a"].sum(0), rtol=1e-6)  # DWA's first weights: 1.


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "gradvac"])
def test_group_scoped_on_the_tiny_bert_shared_tree(tiny_bert_dir, name):
  from conftest import default_config_with

  from mtl_jax import train
  from mtl_jax.config import run_spec
  from mtl_jax.models import multitask

  config = default_config_with(
    **{"model.path": tiny_bert_dir, "model.max_length": 32, "adapter.kind": "full"}
  )
  _, state, _, _ = train.init_state(run_spec.build(config))
  params = state.trainable
  labels = multitask.param_groups(params)
  wrap = lambda tx: mtlgrad.shared_only(tx, multitask.is_shared(params))
  out = check_scoped_equals_per_group(name, params, labels, wrap=wrap)
  grads = random_stack(params, 1)  # The last step's: heads get their own task's gradient.
  for path, group in traverse_util.flatten_dict(labels).items():
    if group is None:
      np.testing.assert_allclose(out[path], traverse_util.flatten_dict(grads)[path].sum(0))


def test_config_grad_scope():
  from conftest import default_config_with

  from mtl_jax.config import run_spec

  assert default_config_with().grad.scope == "global"
  for method in mtlgrad.GROUP_SCOPE_REFUSED:
    config = default_config_with(**{"grad.method": method, "grad.scope": "group"})
    with pytest.raises(run_spec.ConfigError, match=f"grad.scope.*{method}"):
      run_spec.grad_method(config)
  with pytest.raises(run_spec.ConfigError, match="grad.scope"):
    run_spec.grad_method(default_config_with(**{"grad.scope": "layer"}))
  config = default_config_with(**{"grad.method": "pcgrad", "grad.scope": "group"})
  tx = run_spec.grad_method(config)
  params = {
    "encoder": {"layer_0": {"attention": {"w": jnp.zeros(3)}, "output": {"w": jnp.zeros(3)}}}
  }
  state = tx.init(params)
  assert sorted(state.inner_states) == ["layer_0.attention", "layer_0.ffn"]
  # Global scope: exactly the method as before (no wrapper).
  plain = run_spec.grad_method(default_config_with(**{"grad.method": "pcgrad"}))
  assert type(plain.init(params)) is type(mtlgrad.pcgrad(num_tasks=3).init(params))
