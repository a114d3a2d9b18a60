"""Loss-based weighting: Dynamic Weight Average (DWA), FAMO, and uncertainty weighting.

DWA and FAMO weight the task LOSSES, and a method here only sees the per-task
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


class FAMOState(NamedTuple):
  """State of :func:`famo`.

  Attributes:
    logits: float32 [T], the task logits ``w`` (``z = softmax(w)``), initialised to 0.
    mu, nu: float32 [T], Adam's moment estimates of the logits' gradient.
    count: int32, Adam steps taken on the logits.
    prev_loss: float32 [T], the task losses of the previous update (``0`` before one).
    started: bool, whether ``prev_loss`` holds an update's losses.
    stats: ``task_weights`` [T], the weights of the latest update (they sum to 1).
  """

  logits: jax.Array
  mu: jax.Array
  nu: jax.Array
  count: jax.Array
  prev_loss: jax.Array
  started: jax.Array
  stats: dict


FAMO_EPS = 1e-8  # The reference's epsilon inside the logs (and Adam's, torch's default).


def famo_weights(logits: jax.Array, losses: jax.Array, min_losses) -> jax.Array:
  """The weights of the task gradients: FAMO's objective ``sum_i z_i log D_i / c`` with
  ``z = softmax(w)``, ``D = L - L_min + eps`` and ``c = sum_i z_i / D_i`` held constant has
  the gradient ``sum_i z_i / (c D_i) grad L_i``: weights ``z / (c D)``, summing to 1."""
  z = jax.nn.softmax(logits)
  d = losses - min_losses + FAMO_EPS
  return (z / d) / jnp.sum(z / d)


def famo(
  num_tasks: int,
  w_lr: float = 0.025,
  gamma: float = 1e-3,
  min_losses: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
) -> optax.GradientTransformationExtraArgs:
  """FAMO: Fast Adaptive Multitask Optimization (Liu, Liang, Stone & Liu, NeurIPS 2023;
  reference Cranial-XIX/FAMO ``famo.py``, also LibMTL ``FAMO``).

  Update ``t`` receives the raw task losses ``L_t`` (``task_losses=``, [T]) and returns
  ``sum_i a_i g_i`` with ``a = z / (c D)``, ``z = softmax(w)``, ``D = L_t - L_min + 1e-8``,
  ``c = sum_i z_i / D_i`` (:func:`famo_weights`; the gradient of ``sum_i z_i log D_i / c``).
  Before that, the logits learn from the previous update: with
  ``delta = log D(L_{t-1}) - log D(L_t)``, the logits' gradient is the softmax's
  vector-Jacobian product ``J_softmax(w)^T delta = z * (delta - z . delta)``, and one step
  of Adam (``lr = w_lr``, L2 weight decay ``gamma`` added to the gradient, betas
  ``(b1, b2)``, eps 1e-8: ``torch.optim.Adam``) updates ``w``.

  Where the loss after a step is measured: the reference evaluates the losses of the
  parameters after step ``t`` on step ``t``'s batch (a forward pass more per step); here
  they are the next step's losses, on its own batch, which the train step computes anyway.
  The sequence of logit updates is the reference's for that sequence of losses
  (``scripts/make_famo_fixture.py``); the extra work is O(T) per step.

  Args:
    num_tasks: T.
    w_lr: the logits' learning rate (reference 0.025).
    gamma: the logits' weight decay (1e-3 as LibMTL's default; Cranial-XIX's ``famo.py``
      and its experiments use 0.01).
    min_losses: ``L_min``, a lower bound of the losses (reference: 0).
    b1, b2: Adam's betas (torch's defaults).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (leaves ``[T, *shape]`` -> ``[*shape]``).
    ``update(updates, state, params=None, *, task_losses)``; called without the losses
    (a caller that cannot provide them), the weights are ``z`` (as for equal losses) and
    the logits do not move.
  """
  if num_tasks is None or int(num_tasks) < 1:
    raise ValueError(f"famo: num_tasks must be a positive int, got {num_tasks!r}")
  if not w_lr > 0:
    raise ValueError(f"famo: w_lr must be > 0, got {w_lr!r}")
  if not gamma >= 0:
    raise ValueError(f"famo: gamma must be >= 0, got {gamma!r}")
  num_tasks = int(num_tasks)

  def init_fn(params):
    del params
    zeros = lambda: jnp.zeros((num_tasks,), jnp.float32)  # Distinct buffers (donation).
    return FAMOState(
      logits=zeros(),
      mu=zeros(),
      nu=zeros(),
      count=jnp.zeros((), jnp.int32),
      prev_loss=zeros(),
      started=jnp.zeros((), bool),
      stats=_tree.task_stats(num_tasks, ("task_weights",)),
    )

  def logits_step(state: FAMOState, losses: jax.Array) -> FAMOState:
    log_d = lambda loss: jnp.log(loss - min_losses + FAMO_EPS)
    delta = log_d(state.prev_loss) - log_d(losses)
    z = jax.nn.softmax(state.logits)
    grad = z * (delta - jnp.dot(z, delta)) + gamma * state.logits
    count = state.count + 1
    mu = b1 * state.mu + (1 - b1) * grad
    nu = b2 * state.nu + (1 - b2) * grad**2
    c = count.astype(jnp.float32)
    step = w_lr / (1 - b1**c) * mu / (jnp.sqrt(nu) / jnp.sqrt(1 - b2**c) + FAMO_EPS)
    return state._replace(logits=state.logits - step, mu=mu, nu=nu, count=count)

  def update_fn(updates, state, params=None, *, task_losses=None, **extra_args):
    del extra_args
    if task_losses is None:  # A caller without losses: z, the logits unchanged.
      w = jax.nn.softmax(state.logits)
      state = state._replace(stats=_tree.fill_stats(state.stats, task_weights=w))
    else:
      losses = jnp.asarray(task_losses).astype(jnp.float32)
      if losses.shape != (num_tasks,):
        raise ValueError(f"famo: task_losses must have shape ({num_tasks},), got {losses.shape}")
      stepped = logits_step(state, losses)
      state = jax.tree.map(lambda a, b: jnp.where(state.started, a, b), stepped, state)
      w = famo_weights(state.logits, losses, min_losses)
      state = state._replace(
        prev_loss=losses,
        started=jnp.ones((), bool),
        stats=_tree.fill_stats(state.stats, task_weights=w),
      )
    if not jax.tree.leaves(updates):  # e.g. no shared leaves under shared_only
      return updates, state
    _tree.checked_num_tasks(updates, params, num_tasks, "famo")
    return _tree.combine_tree(w, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
