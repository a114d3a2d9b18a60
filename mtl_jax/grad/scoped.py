"""Layer-scoped surgery: a multi-task method run on each parameter group on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from mtl_jax.grad import basic
from mtl_jax.grad.shared import _unless_empty

# config.grad.scope values: "global" runs the method once on the concatenated shared
# gradient (the papers' form); "group" runs one instance per parameter group.
SCOPES = ("global", "group")

# Methods that grad.scope="group" refuses, and why (mtl_jax.config.run_spec names them).
# Every other registered method is defined on any set of leaves, so one instance per group
# is well defined: the geometric ones (pcgrad, cagrad, mgda, upgrad, ...) see the group's
# own Gram matrix; gradvac and nash_mtl keep their state per group (GradVac's paper form is
# per layer); sum / mean / fixed are linear and give the global update; rlw draws the same
# weights in every group (one seed), i.e. the global update too.
GROUP_SCOPE_REFUSED = {
  "dwa": "a loss weighting: its weights come from the task losses alone, the same in every "
  "group, so scoping changes nothing but multiplies its state",
  "famo": "a loss weighting: one set of task logits learned from the change of the task "
  "losses, which no group owns",
  "graddrop": "coordinate-wise already (each coordinate's mask depends on that coordinate "
  "alone): a group scope would only change its random draws",
}

_UNGROUPED = "_ungrouped"


def group_scoped(
  method_factory: Callable[[], optax.GradientTransformation], groups: Any
) -> optax.GradientTransformationExtraArgs:
  """Run a fresh instance of a method (``method_factory()``) on each group of leaves.

  The update of the leaves of group ``g`` is the method applied to group ``g``'s per-task
  gradients alone: its Gram matrix, projections, weights and state are the group's. Leaves
  labelled ``None`` (no group) get ``sum_t g_t``. Implemented with ``optax.partition``
  (``multi_transform``), one partition per group; the extra keyword arguments of
  ``update`` (``task_losses``) reach every instance.

  Args:
    method_factory: builds one instance of the method (e.g. ``lambda: pcgrad()``).
    groups: pytree of group names (str, or None) with the structure of the params, or a
      callable returning it. The callable is applied to the params at ``init`` and to the
      stacked per-task updates at ``update`` (under :func:`shared_only`, to trees whose
      other leaves are optax's masked placeholders), so it must depend on the tree's
      paths only, e.g. ``mtl_jax.models.multitask.param_groups``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (leaves ``[T, *shape]`` -> ``[*shape]``).

  Example:
    >>> tx = shared_only(group_scoped(pcgrad, multitask.param_groups), is_shared)
  """

  def labels(tree):
    names = groups(tree) if callable(groups) else groups
    # By path: a static labelling of the whole params also fits a tree that optax's
    # partition masked (masked leaves: placeholders without leaves, labels ignored).
    flat, _ = jax.tree_util.tree_flatten_with_path(names, is_leaf=lambda x: x is None)
    by_path = dict(flat)
    label_tree = jax.tree_util.tree_map_with_path(
      lambda path, _: by_path.get(path) or _UNGROUPED, tree
    )
    return label_tree, sorted(set(jax.tree.leaves(label_tree)))

  def partitioned(tree) -> tuple[optax.GradientTransformationExtraArgs, Any]:
    label_tree, names = labels(tree)
    transforms = {
      n: _unless_empty(basic.sum_tasks() if n == _UNGROUPED else method_factory()) for n in names
    }
    partition = getattr(optax, "partition", None) or optax.multi_transform
    return optax.with_extra_args_support(partition(transforms, label_tree)), label_tree

  def init_fn(params):
    if not jax.tree.leaves(params):
      return optax.EmptyState()
    return partitioned(params)[0].init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if not jax.tree.leaves(updates):
      return updates, state
    tx, _ = partitioned(updates)
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
