"""Weight averaging: an exponential moving average (EMA) of the trained parameters.

Evaluating a running average of the iterates instead of the last one (Polyak & Juditsky
1992; the EMA of tf.train.ExponentialMovingAverage, timm's ModelEma) smooths out the
noise of the last steps. Here it is an optax transform at the end of the chain
(`ema_params`): its state holds the average of the parameters after each update
(params + updates), so it is saved in every checkpoint with the rest of the optimizer
state and a resumed run continues it exactly; `averaged_params` finds it in a state.

The decay warms up as TensorFlow's does with num_updates: the n-th update (n = 1, 2, ...)
uses beta_n = min(decay, n / (9 + n)) in

    ema_n = beta_n * ema_(n-1) + (1 - beta_n) * params_n,   ema_0 = the initial params.

Why a warm-up, not optax.ema's debiasing: on short runs the warm-up averages a recent
window (61% of the weight on the last tenth of the steps taken) until decay caps it,
after about 9/(1-decay) steps (9,000 at 0.999); the debiased EMA averages every iterate
since the start with weights decay^(n-k), nearly uniform while n << 1/(1-decay): at 0.999
over 300 steps it puts 46% of its weight on the first half of training (the warm-up
0.2%), the poor early iterates of a run of a few hundred steps. Both forget the initial
params (the warm-up leaves them 1e-17 of the weight after 300 steps).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
  count: jax.Array  # Updates averaged so far (int32 scalar).
  ema: Any  # The average, in the parameters' structure and dtypes.


def warmed_decay(decay: float, count: jax.Array) -> jax.Array:
  """beta_n = min(decay, n / (9 + n)) of the n-th update (n = `count` >= 1)."""
  n = count.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), n / (9.0 + n))


def ema_params(decay: float) -> optax.GradientTransformation:
  """Keeps the EMA of the parameters after each update in its state; updates pass through.

  Must come last in the chain: it averages params + the chain's final updates, the
  parameters the step will hold.

  Args:
    decay: the largest beta, in (0, 1); reached after 9 * decay / (1 - decay) updates.

  Returns:
    An optax.GradientTransformation whose state is an EmaState (`averaged_params`).

  Example:
    >>> tx = optax.chain(optax.adamw(1e-3), ema_params(0.999))
    >>> updates, state = tx.update(grads, state, params)   # params required
    >>> averaged_params(state)
  """
  if not 0.0 < decay < 1.0:
    raise ValueError(f"decay must be in (0, 1), got {decay}")

  def init_fn(params):
    return EmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ema_params needs the params: tx.update(updates, state, params)")
    count = optax.safe_increment(state.count)
    beta = warmed_decay(decay, count)
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: (beta * e + (1.0 - beta) * p).astype(e.dtype), state.ema, new)
    return updates, EmaState(count, ema)

  return optax.GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state: Any) -> Any | None:
  """The EMA of the parameters kept in an optimizer state (`ema_params`), None if none."""
  is_ema = lambda x: isinstance(x, EmaState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_ema) if is_ema(x)]
  return found[0].ema if found else None
