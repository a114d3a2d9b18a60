"""Task-specific copies of chosen shared parameter groups (`adapter.task_specific`).

A chosen group (`multitask.param_group`: "embeddings", "layer_<i>.attention",
"layer_<i>.ffn") stops being shared: each task gets its own copy of the group's leaves
that train, initialised from the shared model's values (the pretrained weights under full
fine-tuning; the fresh adapter under LoRA/DoRA, whose pretrained base stays frozen and
shared, since one frozen copy serves every task). Recon (Shi et al., ICLR 2023) makes the
most-conflicting groups task-specific this way; "task-specific top layers" are the top N
layers' groups.

Layout: the copies live in `params[KEY]`, a subtree that mirrors `params["encoder"]`'s
paths for the copied leaves only, each leaf with a leading task axis [T, ...] (copy t is
task t's, TASKS order), and those leaves are gone from `params["encoder"]`. The encoder
module never sees the stack: `task_params` (or `overlay` of one `select`ed copy) puts task
t's copy at the encoder paths, so the model is the plain BERT and a task's forward pass
costs what the shared model's does. As with the task layers (`task_layers.py`), the task
index may be traced: one compiled step serves every task, and each vmap lane takes its
task's slice (one dynamic slice per leaf: not T copies computed and one kept).

Gradients (`mtl_jax.step.make_per_task_grads`): a lane differentiates its task's selected
copy, so the per-task gradient stack of a copied leaf is [T, ...] of the leaf's own shape:
row t is task t's gradient of copy t, the only part of the [T, T, ...] stack that is not
zero. The optimizer (`mtl_jax.grad.shared_only`, `own_slices`) applies row t to copy t.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import traverse_util

KEY = "task_specific"  # The top-level params subtree of the copies.


def is_copy(path: tuple[str, ...]) -> bool:
  """True for the parameter paths (tuples of dict keys) of task-specific copies."""
  return bool(path) and path[0] == KEY


def make_copies(params: dict, chosen: Callable[[tuple[str, ...]], bool], num_tasks: int) -> dict:
  """Moves every `params["encoder"]` leaf whose full path `chosen` accepts into
  `params[KEY]` (same path below "encoder"), stacked `num_tasks` times: each task's copy
  starts equal to the shared value."""
  out, copies = {}, {}
  for path, value in traverse_util.flatten_dict(params).items():
    if path[0] == "encoder" and chosen(path):
      copies[path[1:]] = jnp.repeat(jnp.asarray(value)[None], num_tasks, axis=0)
    else:
      out[path] = value
  tree = traverse_util.unflatten_dict(out)
  return dict(tree, **{KEY: traverse_util.unflatten_dict(copies)}) if copies else tree


def select(copies: dict, task: jax.Array | int) -> dict:
  """Task `task`'s copy (the slice [task] of every stacked leaf); `task` may be traced."""
  return jax.tree.map(lambda x: x[task], copies)


def overlay(params: dict, copy: dict) -> dict:
  """`params` with one task's (selected) copy put at its encoder paths."""
  flat = traverse_util.flatten_dict(params)
  flat.update({("encoder", *p): v for p, v in traverse_util.flatten_dict(copy).items()})
  return traverse_util.unflatten_dict(flat)


def task_params(params: dict, task: jax.Array | int | None) -> dict:
  """The plain model params task `task` runs with: its copies at their encoder paths
  (params without copies are returned as they are)."""
  if KEY not in params:
    return params
  if task is None:
    raise ValueError(
      "this model has task-specific copies of shared layers (adapter.task_specific): "
      "give the task whose copies to use"
    )
  rest = {k: v for k, v in params.items() if k != KEY}
  return overlay(rest, select(params[KEY], task))
