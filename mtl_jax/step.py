"""The jitted train step: per-task gradients by `vmap` over the task axis, one optax update.

Each task's gradient is the gradient of its own loss on its own batch, taken with respect
to the trainable leaves only (frozen weights get no weight-gradient at all). The stacked
gradients [T, ...] go to the optimizer, whose first transform (an `mtl_jax.grad` method)
combines them into one update; it also receives the raw per-task losses
(`task_losses=`, used by loss-based methods such as `dwa`, ignored by the others).

With a one-task schedule (`config.train.schedule`, `mtl_jax.data.schedules`) a step's batch
holds one task, and its gradient fills that task's row of the [T, ...] stack, zeros elsewhere.

Uncertainty weighting (`config.train.loss_weighting="uncertainty"`): the trainable tree
holds `{"loss_weighting": {"log_var": [T]}}` and task t's objective is
`mtl_jax.grad.weighted_task_loss(L_t, log_var, t)`; the logged losses stay the raw ones.

Dropout is keyed by (seed, step) alone (`dropout_keys`), so a resumed run,
`mtl_jax.diagnose` (which takes this very step on a checkpoint) and `mtl_jax.bench` (this
step) draw the trainer's masks.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from mtl_jax import grad as mtlgrad
from mtl_jax import smart as smart_lib
from mtl_jax import tasks
from mtl_jax.grad.loss_weighting import LOSS_WEIGHTING_KEY, weighted_task_loss
from mtl_jax.models import multitask, task_specific


class TrainState(NamedTuple):
  step: jax.Array
  trainable: dict
  opt_state: Any


# Per-example losses of a head output and labels, by the task table's loss kind.
_LOSSES = {
  "cross_entropy": lambda out, y: optax.softmax_cross_entropy_with_integer_labels(
    out, y.astype(jnp.int32)
  ),
  "binary_cross_entropy": optax.sigmoid_binary_cross_entropy,
  "mse": lambda out, y: (out - y) ** 2,
}


COSENT_SCALE = 20.0  # CoSENT's lambda: Su's, and sentence-transformers' CoSENTLoss default.


def cosent(
  scores: jax.Array, labels: jax.Array, weights: jax.Array, scale: float = COSENT_SCALE
) -> jax.Array:
  """CoSENT (Su 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT";
  sentence-transformers' CoSENTLoss) of one batch's N pairs:

    log(1 + sum over (i, j) with y_i > y_j of exp(scale * (s_j - s_i)))

  over the real pairs (weights > 0) only. A ranking loss: it asks every pair with the
  higher gold score for the higher predicted score, so it trains the order of the scores,
  not their values (Pearson on the 0..5 prediction is scale-free). The sum runs over the
  pairs of one batch, so the loss of a batch is not the mean of its examples' losses: a
  batch split in parts would rank fewer pairs (why packing keeps a CoSENT task in one lane,
  `HeadSpec.batch_ranked_tasks`). Computed in float32 (scale * a bf16 score would round
  by ~0.1)."""
  s = scale * scores.astype(jnp.float32)
  real = weights > 0
  ranked = (labels[:, None] > labels[None, :]) & real[:, None] & real[None, :]
  terms = jnp.where(ranked, s[None, :] - s[:, None], -jnp.inf)  # [i, j]: s_j - s_i.
  return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1, jnp.float32), terms.ravel()]))


def task_loss(
  outputs: dict,
  labels: jax.Array,
  weights: jax.Array,
  task: jax.Array,
  specs: tuple[tasks.TaskSpec, ...] = tasks.DEFAULT,
) -> jax.Array:
  """The loss of task `task` (an index into `specs`, the run's tasks; may be traced) on its
  batch.

  Each task's loss is its `tasks.TaskSpec.loss` on its head output: SST cross-entropy;
  Quora binary cross-entropy with logits; STS mean squared error on the 0..5 scale, or,
  when the heads also output the score on the unit scale, `sts_unit`
  (config.heads.sts_loss="cosine"), the mean squared error between that score and
  label / 5 (sentence-transformers' CosineSimilarityLoss), or, when they output a score
  to rank, `sts_rank` (config.heads.sts_loss="cosent"), CoSENT on it (`cosent`).
  `weights` marks real examples (0 for padding rows). A task's labels are in its batch's
  first N rows, N = the length of its head output: S sentences, S/2 bi-encoded pairs or S
  cross-encoded ones (config.heads.pairs, per task).
  """

  def mean(x, w):
    return (x * w).sum() / jnp.maximum(w.sum(), 1.0)

  def loss_of(spec: tasks.TaskSpec):
    def loss():
      out = outputs[spec.output]
      y, w = labels[: out.shape[0]], weights[: out.shape[0]]
      rank = outputs.get(f"{spec.output}_rank")  # A score to rank within the batch.
      if rank is not None:
        return cosent(rank, y, w)
      unit = outputs.get(f"{spec.output}_unit")  # A score on the unit scale.
      if unit is not None:
        return mean((unit - y / spec.max_score) ** 2, w)
      return mean(_LOSSES[spec.base_loss](out, y), w)

    return loss

  return jax.lax.switch(task, [loss_of(spec) for spec in specs])


def _make_losses(model: multitask.MultitaskModel, smart: smart_lib.SmartConfig | None = None):
  """fn(trainable, frozen, one task's batch, task id, key[, word-vector perturbation[, the
  task's selected copy]]) -> (objective, raw loss). Without `copy`, task-specific copies
  still in the params are selected by `task` (`multitask.apply`)."""
  regularized = smart is not None and smart.weight > 0

  def losses(trainable, frozen, batch, task, key, word_vectors=None, copy=None):
    weighting = trainable.get(LOSS_WEIGHTING_KEY)
    params = multitask.merge(
      {k: v for k, v in trainable.items() if k != LOSS_WEIGHTING_KEY}, frozen
    )
    if copy is not None:
      params = task_specific.overlay(params, copy)

    def apply(variables, delta=None):
      """The heads' outputs; `delta` is added to the looked-up word vectors (SMART)."""
      params, vectors = variables
      if delta is not None:
        vectors = delta if vectors is None else vectors + delta
      perturbations = None if vectors is None else _unflat({WORD_VECTORS: vectors})
      return multitask.apply(
        model,
        params,
        batch,
        deterministic=False,
        task=task,
        rngs={"dropout": key},
        perturbations=perturbations,
      )

    outputs = apply((params, word_vectors))
    raw = task_loss(outputs, batch["labels"], batch["weights"], task, model.head_spec.tasks)
    objective = raw if weighting is None else weighted_task_loss(raw, weighting["log_var"], task)
    if regularized:  # The perturbed forwards share the clean one's dropout key (`smart`).
      objective += smart.weight * smart_lib.regularizer(
        apply,
        (params, word_vectors),
        outputs,
        batch["weights"],
        batch["attention_mask"],
        task,
        key,
        model.config.hidden_size,
        smart,
        model.head_spec.tasks,
      )
    share = batch.get("slot_share", 1.0)  # A slot's share of its task (see `lanes`).
    return share * objective, share * raw

  return losses


def make_loss_fn(model: multitask.MultitaskModel, smart: smart_lib.SmartConfig | None = None):
  """Returns loss(trainable, frozen, one task's batch [S, ...], task id, dropout key): the
  objective whose gradient trains (the raw loss, or its uncertainty-weighted form, plus
  SMART's regularizer with `smart`)."""
  losses = _make_losses(model, smart)
  return lambda *args: losses(*args)[0]


def lanes(batch: dict, task_ids: jax.Array, keys: jax.Array):
  """(task id [K], dropout key [K], the [T, K] 0/1 matrix that sums lanes into tasks, or
  None when lane t is task t) of a batch's K vmap lanes.

  A packed batch with slots (`mtl_jax.data.packing`) splits the tasks with the most tokens
  over several lanes: "slot_task" [K] is each lane's position in `task_ids`, and each
  lane's loss is scaled by its "slot_share" of the task's examples, so a task's lanes sum
  to its mean loss and their gradients to its gradient. A task's first lane draws the
  task's own dropout key; its further lanes draw keys folded from it."""
  if "slot_task" not in batch:
    return task_ids, keys, None
  slot = batch["slot_task"]
  order = jnp.arange(slot.shape[0])
  part = ((slot[None, :] == slot[:, None]) & (order[None, :] < order[:, None])).sum(1)

  def lane_key(key, part):
    data = jax.random.key_data
    return jax.random.wrap_key_data(
      jnp.where(part == 0, data(key), data(jax.random.fold_in(key, part)))
    )

  combine = jax.nn.one_hot(slot, task_ids.shape[0], dtype=jnp.float32).T
  return task_ids[slot], jax.vmap(lane_key)(keys[slot], part), combine


def sum_lanes(combine: jax.Array | None, tree):
  """Per-lane [K, ...] leaves -> per-task [T, ...] (`lanes`' matrix); as is without one."""
  if combine is None:
    return tree
  return jax.tree.map(lambda x: jnp.tensordot(combine.astype(x.dtype), x, axes=1), tree)


# The word-embedding table in the params (shared, or each task's copy of it), and the
# perturbation point of its looked-up vectors (`mtl_jax.models.bert.Embeddings`).
WORD_TABLE = ("encoder", "embeddings", "word_embeddings", "embedding")
WORD_VECTORS = ("encoder", "embeddings", "word_vectors")
_COPY_TABLE = WORD_TABLE[1:]  # Its path among the task-specific copies.


def make_per_task_grads(
  model: multitask.MultitaskModel, smart: smart_lib.SmartConfig | None = None
):
  """Returns fn(trainable, frozen, batch [K, S, ...], task ids [T], keys [T]) ->
  (raw losses [T], gradients of the trainable leaves with a leading task axis [T, ...]).

  The gradients are those of each task's objective (see `make_loss_fn`; with `smart`,
  each carries its own task's SMART regularizer), one `vmap` lane per task, or per slot of
  a packed batch with slots (`lanes`), summed into tasks.

  Task-specific copies (`mtl_jax.models.task_specific`, leaves [T, ...]): each lane takes
  its task's slice and differentiates that, so their gradients hold one row per entry of
  `task_ids`, row i task task_ids[i]'s gradient of its own copy (the other rows of that
  task's gradient are zero and never built): [T, ...] like the leaves when `task_ids` are
  all the tasks in TASKS order, as in the trainer.

  A trainable word-embedding table (full fine-tuning) is not differentiated inside the
  lanes: each lane would build a dense [vocab, H] gradient (zero fill and scatter) for the
  few hundred distinct tokens it holds, K of them a step, and summing lanes into tasks
  would read them all again. The lanes give the gradient of their looked-up word vectors
  [K, R, L, H] instead (a flax perturbation), scatter-added once into the tasks' table
  gradients [T, vocab, H]: the same sums, in another order. When the table is task-specific
  the same scatter is the gradient of each task's own copy."""
  grad_fn = jax.value_and_grad(_make_losses(model, smart), argnums=(0, 5, 6), has_aux=True)

  def lane(rest, frozen, batch, task, key, vectors, copies, table_copies):
    """One lane's (objective, raw), gradients (rest, word vectors, its task's copy)."""
    if table_copies is not None:  # Its task's table, used but not differentiated here.
      frozen = _unflat({**_flat(frozen), WORD_TABLE: table_copies[task]})
    copy = None if copies is None else task_specific.select(copies, task)
    return grad_fn(rest, frozen, batch, task, key, vectors, copy)

  def per_task(trainable, frozen, batch, task_ids, keys):
    lane_tasks, lane_keys, combine = lanes(batch, task_ids, keys)
    rest = {k: v for k, v in trainable.items() if k != task_specific.KEY}
    flat, copies = _flat(rest), trainable.get(task_specific.KEY)
    table, table_copies = flat.pop(WORD_TABLE, None), None
    if copies is not None and _COPY_TABLE in _flat(copies):
      copies = _flat(copies)
      table_copies = table = copies.pop(_COPY_TABLE)
      copies = _unflat(copies)
    ids = batch["input_ids"]
    vectors = None
    if table is not None:
      rest = _unflat(flat)
      if table_copies is None:
        frozen = _unflat({**_flat(frozen), WORD_TABLE: table})
      vectors = jnp.zeros((*ids.shape, table.shape[-1]), table.dtype)
    (_, raw), (grads, vector_grads, copy_grads) = jax.vmap(
      lane, in_axes=(None, None, 0, 0, 0, None if vectors is None else 0, None, None)
    )(rest, frozen, batch, lane_tasks, lane_keys, vectors, copies, table_copies)
    raw, grads, copy_grads = sum_lanes(combine, (raw, grads, copy_grads))
    flat_grads = _flat(grads)
    if copy_grads is not None:
      flat_grads.update({(task_specific.KEY, *p): g for p, g in _flat(copy_grads).items()})
    if table is not None:
      lane_task = batch.get("slot_task", jnp.arange(ids.shape[0]))  # Lane -> row of [T].
      lane_task = jnp.broadcast_to(lane_task.reshape(-1, *(1,) * (ids.ndim - 1)), ids.shape)
      table_grad = jnp.zeros((task_ids.shape[0], *table.shape[-2:]), table.dtype)
      table_grad = table_grad.at[lane_task, ids].add(vector_grads)
      path = WORD_TABLE if table_copies is None else (task_specific.KEY, *_COPY_TABLE)
      flat_grads[path] = table_grad
    return raw, _unflat(flat_grads)

  return per_task


# Nested param dicts <-> {path tuple: leaf}, empty dicts kept (the trees' structure is the
# optimizer state's).
_flat = functools.partial(traverse_util.flatten_dict, keep_empty_nodes=True)
_unflat = traverse_util.unflatten_dict


def dropout_keys(seed: int, step, num_tasks: int) -> jax.Array:
  """The dropout keys [num_tasks] of train step `step` (an int or a traced scalar), one per
  task: a function of (seed, step) alone, so a resumed run, `mtl_jax.diagnose` and
  `mtl_jax.bench` draw the masks the trainer draws at that step. A one-task step uses its
  task's key."""
  return jax.random.split(jax.random.fold_in(jax.random.key(seed), step), num_tasks)


def shared_gradients(grads: dict) -> dict:
  """The per-task gradients of the shared leaves only, for diagnostics ({} when probing:
  heads and learned loss log-variances belong to one task each)."""
  shared = jax.tree.map(lambda g, s: g if s else None, grads, multitask.is_shared(grads))
  return shared if jax.tree.leaves(shared) else {}


def group_metrics(groups: dict, names: list[str]) -> dict:
  """Per-group gradient stats (`mtlgrad.group_gradient_stats`) as metrics: the norms
  "group_norm/<group>" [T] (metrics.jsonl spreads them into group_norm/<group>/<task>) and
  the cosines "group_cos/<group>/<task i>-<task j>" (i < j), scalars."""
  out = {}
  for group, s in groups.items():
    out[f"group_norm/{group}"] = s["grad_norm"]
    for i in range(len(names)):
      for j in range(i + 1, len(names)):
        out[f"group_cos/{group}/{names[i]}-{names[j]}"] = s["cosine"][i, j]
  return out


def make_train_step(
  model: multitask.MultitaskModel,
  tx: optax.GradientTransformation,
  task_ids: tuple[int, ...],
  seed: int,
  smart: smart_lib.SmartConfig | None = None,
):
  """Returns step(state, frozen, batch, statistics=True) -> (state, metrics).

  `smart` (RunSpec.smart, config.train.smart): each task's objective carries SMART's
  regularizer (`mtl_jax.smart`); the logged losses stay the raw ones.

  A batch of every task (schedule `all_tasks`): leaves [T, S, ...], the gradients of the
  tasks `task_ids` by `vmap`. A batch of one task (the other schedules, see
  `mtl_jax.data.schedules`): leaves [1, S, ...] plus `batch["task"]`, the int32 position of
  that task in `task_ids` (task-axis order in the trainer), traced, so one compiled step per
  length bucket serves every task.
  Its gradient goes to its row of a zero [T, ...] stack, so the same optimizer chain
  applies; with a method linear per task (`mtlgrad.LINEAR_METHODS`, which
  `specs.validate` insists on) that is a step on that task alone. Its dropout key is the
  one the task would get in an all-tasks step. Metrics then hold that task's loss and
  index ("task"), and no between-task gradient statistics (there is one gradient).

  `tx.update` gets `task_losses=` (raw losses [T]; zero for the tasks not in the batch):
  `tx` must accept extra keyword arguments, as `optax.chain` and `optax.partition`
  (`mtlgrad.shared_only`) do.

  An all-tasks step's metrics hold the geometry of the shared gradients ("grad/...":
  norms, cosines, conflicts over all shared leaves) and the same per
  parameter group (`multitask.param_group`: embeddings, each layer's attention and
  feed-forward blocks; `group_metrics`); the overall stats are then the sum of the
  groups' Gram matrices, so the groups cost no second pass over the gradients.

  `statistics` says whether to compute those: True (every step; what the bench times),
  False (never: the bench's "summed" baseline) or a traced bool, which the trainer passes so
  that only the steps it logs pay for them (`lax.cond`; one compiled step). With full
  fine-tuning they read the [T, ...] gradient stack once more, about a tenth of a step; the
  other steps' "grad/..." metrics are zeros. The update never depends on them."""
  per_task_grads = make_per_task_grads(model, smart)
  num_tasks = len(task_ids)
  names = [model.head_spec.names[i] for i in task_ids]

  def gradient_metrics(grads) -> dict:
    shared = shared_gradients(grads)
    if not shared:
      return {}
    groups, overall = mtlgrad.group_gradient_stats(grads, multitask.param_groups(grads))
    return {**{f"grad/{k}": v for k, v in overall.items()}, **group_metrics(groups, names)}

  def one_task(trainable, frozen, batch, keys):
    """(losses [T], gradients [T, ...]) with only row batch["task"] nonzero."""
    task = batch["task"]
    inputs = {k: v for k, v in batch.items() if k != "task"}
    loss, grads = per_task_grads(trainable, frozen, inputs, task[None], keys[task][None])
    place = lambda x: jnp.zeros((num_tasks, *x.shape[1:]), x.dtype).at[task].set(x[0])
    return place(loss), jax.tree.map(place, grads)

  def statistics_of(grads, statistics) -> dict:
    if statistics is True or statistics is False:  # Known when traced: no branch.
      return gradient_metrics(grads) if statistics else {}
    skipped = lambda g: jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(gradient_metrics, g)
    )
    return jax.lax.cond(statistics, gradient_metrics, skipped, grads)

  def step(
    state: TrainState, frozen: dict, batch: dict, statistics=True
  ) -> tuple[TrainState, dict]:
    keys = dropout_keys(seed, state.step, num_tasks)
    single = "task" in batch  # The batch's structure: fixed per compiled step.
    if single:
      losses, grads = one_task(state.trainable, frozen, batch, keys)
    else:
      losses, grads = per_task_grads(state.trainable, frozen, batch, jnp.asarray(task_ids), keys)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable, task_losses=losses)
    trainable = optax.apply_updates(state.trainable, updates)
    weighting = state.trainable.get(LOSS_WEIGHTING_KEY)
    metrics = {
      **(
        {"loss": losses[batch["task"]], "task": batch["task"]}
        if single
        else {"loss": losses.sum(), "task_loss": losses}
      ),
      **({"loss_weight": jnp.exp(-weighting["log_var"])} if weighting is not None else {}),
      "l2_params": optax.tree.norm(trainable),
      "l2_updates": optax.tree.norm(updates),
      **({} if single else statistics_of(grads, statistics)),
      **{f"method/{k}": v for k, v in mtlgrad.method_stats(opt_state).items()},
    }
    return TrainState(state.step + 1, trainable, opt_state), metrics

  return step
