"""Loss-based weighting: Dynamic Weight Average (DWA), and uncertainty weighting.

DWA weights the task LOSSES, and a method here only sees the per-task
gradients; since each ``g_k`` is linear in its loss, ``sum_k w_k g_k`` is the
gradient of ``sum_k w_k L_k``. The losses themselves reach the transform as
the keyword ``task_losses`` of ``update`` (an
``optax.GradientTransformationExtraArgs``: ``optax.chain`` and
``optax.partition`` / :func:`shared_only` forward extra keyword arguments to
such transforms only, so the other methods ignore them).

Uncertainty weighting (Kendall et al. 2018) has learnable parameters and
lives on the loss side instead (``config.train.loss_weighting``): the
trainable tree holds ``{LOSS_WEIGHTING_KEY: uncertainty_params(T)}``, and the
train step (``mtl_jax.step``) trains task ``t`` on
:func:`weighted_task_loss` of its raw loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.grad import _tree

# config.train.loss_weighting values; "uncertainty" adds trainable[LOSS_WEIGHTING_KEY].
LOSS_WEIGHTINGS = ("none", "uncertainty")
LOSS_WEIGHTING_KEY = "loss_weighting"


def uncertainty_params(num_tasks: int) -> dict:
  """The learned log-variances of uncertainty weighting, one per task, initialised to 0."""
  return {"log_var": jnp.zeros((num_tasks,))}


def weighted_task_loss(raw_loss: jax.Array, log_var: jax.Array, task: jax.Array) -> jax.Array:
  """Uncertainty weighting (Kendall, Gal & Cipolla 2018; LibMTL's form) of task `task`:
  `exp(-s) * L / 2 + s / 2` with `s = log_var[task]` (a learned log-variance, init 0)."""
  s = log_var[task]
  return jnp.exp(-s) * raw_loss / 2 + s / 2


class DWAState(NamedTuple):
  """State of :func:`dwa`.

  Attributes:
    count: int32, steps accumulated in the current window (``0..period-1``).
    window_sum: float32 [T], sum of each task's loss over the current window.
    last: float32 [T], mean loss of the last completed window, ``L(t-1)``.
    before_last: float32 [T], mean loss of the window before, ``L(t-2)``.
    windows: int32, number of completed windows.
    stats: ``task_weights`` [T], the weights of the latest update.
  """

  count: jax.Array
  window_sum: jax.Array
  last: jax.Array
  before_last: jax.Array
  windows: jax.Array
  stats: dict


def dwa_weights(
  last: jax.Array, before_last: jax.Array, windows: jax.Array, temperature: float
) -> jax.Array:
  """``K softmax(r / T)`` with ``r = last / before_last``; ones before two windows."""
  k = last.shape[0]
  ok = before_last > 0
  ratio = jnp.where(ok, last / jnp.where(ok, before_last, 1.0), 1.0)
  w = k * jax.nn.softmax(ratio / temperature)
  return jnp.where(windows >= 2, w, jnp.ones_like(w))


def dwa(
  num_tasks: int, temperature: float = 2.0, period: int = 100
) -> optax.GradientTransformationExtraArgs:
  """Dynamic Weight Average.

  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019, eq. 7::

      w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T),
      r_k(t-1) = L_k(t-1) / L_k(t-2),

  with ``w_k = 1`` for the first two periods. The paper's ``L_k`` is the mean
  loss of an epoch; here it is the mean of ``task_losses`` over consecutive
  windows of ``period`` updates (window ``p`` = updates ``p*period`` ..
  ``(p+1)*period - 1``). Update ``n`` uses the weights of the windows
  completed BEFORE it, then adds its own losses to the current window. The
  output is ``sum_k w_k g_k`` (weights sum to ``K``, as LibMTL's ``DWA``).

  ``update(updates, state, params=None, *, task_losses)``: ``task_losses``
  [T] are the raw per-task losses of the step. Called without them (a caller
  that cannot provide them, e.g. a diagnostic replay), the current weights are
  applied and the windows do not advance.

  Args:
    num_tasks: T (the state holds per-task loss windows).
    temperature: the softmax temperature ``T`` (paper: 2).
    period: updates per loss window (>= 1; the paper uses epochs).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (leaves ``[T, *shape]`` ->
    ``[*shape]``).

  Example:
    >>> tx = optax.chain(dwa(num_tasks=3, period=100), optax.adamw(1e-3))
    >>> updates, state = tx.update(per_task_grads, state, params, task_losses=losses)
  """
  if num_tasks is None or int(num_tasks) < 1:
    raise ValueError(f"dwa: num_tasks must be a positive int, got {num_tasks!r}")
  if int(period) != period or period < 1:
    raise ValueError(f"dwa: period must be an int >= 1, got {period!r}")
  if not temperature > 0:
    raise ValueError(f"dwa: temperature must be > 0, got {temperature!r}")
  num_tasks, period, temperature = int(num_tasks), int(period), float(temperature)

  def init_fn(params):
    del params
    zeros = lambda: jnp.zeros((num_tasks,), jnp.float32)  # Distinct buffers (donation).
    return DWAState(
      count=jnp.zeros((), jnp.int32),
      window_sum=zeros(),
      last=zeros(),
      before_last=zeros(),
      windows=jnp.zeros((), jnp.int32),
      stats=_tree.task_stats(num_tasks, ("task_weights",)),
    )

  def update_fn(updates, state, params=None, *, task_losses=None, **extra_args):
    del extra_args
    w = dwa_weights(state.last, state.before_last, state.windows, temperature)
    stats = _tree.fill_stats(state.stats, task_weights=w)
    if task_losses is None:
      new_state = state._replace(stats=stats)
    else:
      losses = jnp.asarray(task_losses).astype(jnp.float32)
      if losses.shape != (num_tasks,):
        raise ValueError(f"dwa: task_losses must have shape ({num_tasks},), got {losses.shape}")
      total = state.window_sum + losses
      count = state.count + 1
      done = count >= period
      new_state = DWAState(
        count=jnp.where(done, 0, count),
        window_sum=jnp.where(done, jnp.zeros_like(total), total),
        last=jnp.where(done, total / period, state.last),
        before_last=jnp.where(done, state.last, state.before_last),
        windows=state.windows + done.astype(jnp.int32),
        stats=stats,
      )
    if not jax.tree.leaves(updates):  # e.g. no shared leaves under shared_only
      return updates, new_state
    _tree.checked_num_tasks(updates, params, num_tasks, "dwa")
    return _tree.combine_tree(w, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
