"""Learning rates per parameter group: heads at k times the base rate, layer-wise decay.

In optax.adamw the learning rate multiplies the whole update, the weight-decay term
included: -lr_t (m̂/(√v̂ + eps) + wd·p). Scaling that update by a fixed m per leaf is
therefore AdamW with learning rate m·lr_t on that leaf, the schedule kept: the per-group
learning rates of a torch param-group optimizer, as one stateless transform after AdamW
(`scale_by_multipliers`); resuming needs nothing.

The multiplier of a trainable leaf (`multipliers`):
* a task-specific leaf (`multitask.is_shared` False: heads, task layers, the learned
  loss log-variances): `head` (train.head_lr_multiplier);
* a shared leaf: `decay ** layer_exponent` (train.layer_lr_decay, LLRD), in the
  convention of BEiT's and MAE's fine-tuning code: with L encoder layers, the embeddings
  get decay^(L+1), layer i (0-based) decay^(L-i), so the top layer gets decay·lr, one
  step below the heads; any other shared leaf the base rate. ELECTRA's code puts its task
  layers one step higher still (top layer decay^2, embeddings decay^(L+2)); Sun et al.
  (2019, "How to Fine-Tune BERT for Text Classification?") give the top layer the base
  rate itself: theirs at rate lr is ours at lr/decay, heads aside. An adapter's leaves
  (LoRA a, b; DoRA's magnitude) sit under the dense they adapt (`multitask.param_group`),
  so they decay with their layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtl_jax.models import multitask


def layer_exponent(group: str, num_layers: int) -> int:
  """The power of the layer decay of a shared leaf of `multitask.param_group` `group` in
  an encoder of `num_layers` layers: L + 1 for the embeddings, L - i for layer i, 0 else."""
  if group == "embeddings":
    return num_layers + 1
  if group.startswith("layer_"):
    return num_layers - int(group[len("layer_") :].partition(".")[0])
  return 0


def multipliers(
  trainable: dict, num_layers: int | None, head: float = 1.0, layer_decay: float = 1.0
) -> dict:
  """The learning-rate multiplier of every leaf of `trainable` (a pytree of Python floats
  of its structure): `head` for task-specific leaves, layer_decay ** `layer_exponent` for
  shared ones. `num_layers` (the encoder's, not the adapted ones') may be None only when
  layer_decay is 1."""
  if layer_decay != 1.0 and num_layers is None:
    raise ValueError("layer_lr_decay needs the encoder's number of layers")

  def multiplier(group: str | None) -> float:
    if group is None:
      return float(head)
    return float(layer_decay) ** layer_exponent(group, num_layers or 0)

  is_group = lambda x: x is None or isinstance(x, str)
  return jax.tree.map(multiplier, multitask.param_groups(trainable), is_leaf=is_group)


def scale_by_multipliers(tree: dict) -> optax.GradientTransformation:
  """Multiplies each leaf of the updates by its float in `tree` (same structure; a leaf
  at 1.0 is passed through untouched). Stateless.

  Args:
    tree: the multipliers, e.g. `multipliers(trainable, ...)`.

  Returns:
    An optax.GradientTransformation; after optax.adamw(lr), leaf-wise AdamW at m·lr.

  Example:
    >>> tx = optax.chain(optax.adamw(1e-3), scale_by_multipliers({"w": 10.0, "b": 1.0}))
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scaled = jax.tree.map(
      lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, tree
    )
    return scaled, state

  return optax.GradientTransformation(init_fn, update_fn)
