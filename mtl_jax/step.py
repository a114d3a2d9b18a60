"""The jitted train step: per-task gradients by `vmap` over the task axis, one optax update.

Each task's gradient is the gradient of its own loss on its own batch, taken with respect
to the trainable leaves only (frozen weights get no weight-gradient at all). The stacked
gradients [T, ...] go to the optimizer, whose first transform (an `mtl_jax.grad` method)
combines them into one update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax import grad as mtlgrad
from mtl_jax.data.files import TASKS
from mtl_jax.models import multitask


class TrainState(NamedTuple):
  step: jax.Array
  trainable: dict
  opt_state: Any


def task_loss(outputs: dict, labels: jax.Array, weights: jax.Array, task: jax.Array) -> jax.Array:
  """The loss of task `task` (an index into TASKS, may be traced) on its batch.

  SST: cross-entropy; Quora: binary cross-entropy with logits; STS: mean squared error
  on the 0..5 scale. `weights` marks real examples (0 for padding rows).
  """
  half = labels.shape[0] // 2

  def mean(x, w):
    return (x * w).sum() / jnp.maximum(w.sum(), 1.0)

  def sst():
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs["sst"], labels.astype(jnp.int32))
    return mean(ce, weights)

  def quora():
    return mean(optax.sigmoid_binary_cross_entropy(outputs["quora"], labels[:half]), weights[:half])

  def sts():
    return mean((outputs["sts"] - labels[:half]) ** 2, weights[:half])

  branches = {"sst": sst, "quora": quora, "sts": sts}
  return jax.lax.switch(task, [branches[t] for t in TASKS])


def make_loss_fn(model: multitask.MultitaskModel):
  """Returns loss(trainable, frozen, one task's batch [S, ...], task id, dropout key)."""
  def loss_fn(trainable, frozen, batch, task, key):
    params = multitask.merge(trainable, frozen)
    outputs = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], deterministic=False, rngs={"dropout": key})
    return task_loss(outputs, batch["labels"], batch["weights"], task)
  return loss_fn


def make_per_task_grads(model: multitask.MultitaskModel):
  """Returns fn(trainable, frozen, batch [T, S, ...], task ids [T], keys [T]) ->
  (losses [T], gradients of the trainable leaves with a leading task axis [T, ...])."""
  return jax.vmap(jax.value_and_grad(make_loss_fn(model)), in_axes=(None, None, 0, 0, 0))


def make_train_step(model: multitask.MultitaskModel, tx: optax.GradientTransformation,
                    task_ids: tuple[int, ...], seed: int):
  """Returns step(state, frozen, batch) -> (state, metrics); batch leaves are [T, S, ...]."""
  base_key = jax.random.key(seed)
  per_task_grads = make_per_task_grads(model)

  def step(state: TrainState, frozen: dict, batch: dict) -> tuple[TrainState, dict]:
    keys = jax.random.split(jax.random.fold_in(base_key, state.step), len(task_ids))
    losses, grads = per_task_grads(state.trainable, frozen, batch, jnp.asarray(task_ids), keys)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    shared = {k: v for k, v in grads.items() if k != "heads"}  # Probing has none.
    metrics = {
        "loss": losses.sum(),
        "task_loss": losses,
        "l2_params": optax.tree.norm(trainable),
        "l2_updates": optax.tree.norm(updates),
        **({f"grad/{k}": v for k, v in mtlgrad.task_gradient_stats(shared).items()}
           if shared else {}),
        **{f"method/{k}": v for k, v in mtlgrad.method_stats(opt_state).items()},
    }
    return TrainState(state.step + 1, trainable, opt_state), metrics

  return step
