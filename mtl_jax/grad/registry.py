"""Method registry: ``get_method(name, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable

import optax

from mtl_jax.grad import balancing, basic, loss_weighting, min_norm, projection, sign_dropout

METHODS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "sum": basic.sum_tasks,
  "mean": basic.mean_tasks,
  "fixed": basic.fixed,
  "rlw": basic.rlw,
  "pcgrad": projection.pcgrad,
  "pcgrad_against_sum": projection.pcgrad_against_sum,
  "gradvac": projection.gradvac,
  "mgda": min_norm.mgda,
  "cagrad": min_norm.cagrad,
  "upgrad": min_norm.upgrad,
  "dualproj": min_norm.dualproj,
  "imtl_g": balancing.imtl_g,
  "aligned_mtl": balancing.aligned_mtl,
  "nash_mtl": balancing.nash_mtl,
  "graddrop": sign_dropout.graddrop,
  "dwa": loss_weighting.dwa,
  "famo": loss_weighting.famo,
}

# Methods whose update is a fixed linear combination sum_t w_t g_t of the task gradients.
# Only these mean the same thing when a step trains one task t (a one-task schedule hands
# them a [T, ...] stack whose other rows are zero): w_t g_t, task t's gradient, scaled.
# Every other method needs every task's gradient in each step (projections, min-norm or
# balancing weights, loss ratios, random weights) and would silently degrade.
LINEAR_METHODS = ("sum", "fixed")


def canonical_name(name: str) -> str:
  """The :data:`METHODS` key a method name means (case-insensitive; ``-`` and ``_`` alike)."""
  return name.strip().lower().replace("-", "_")


def get_method(name: str, **kwargs) -> optax.GradientTransformation:
  """Build the method registered under ``name`` with ``kwargs``.

  Every factory accepts ``num_tasks`` (used for per-task stats / state, or
  only checked), so a trainer can always pass ``num_tasks=T``. ``dwa`` also
  needs the step's losses: pass ``task_losses=`` to ``update`` (the other
  methods ignore it inside ``optax.chain`` / :func:`shared_only`).

  Args:
    name: a key of :data:`METHODS` (case-insensitive; ``-`` and ``_`` alike).
    **kwargs: forwarded to the factory.

  Returns:
    The ``optax.GradientTransformation``.

  Raises:
    ValueError: unknown name (the message lists the valid names).

  Example:
    >>> tx = optax.chain(get_method("pcgrad", num_tasks=3), optax.adamw(1e-3))
  """
  key = canonical_name(name)
  if key not in METHODS:
    raise ValueError(
      f"unknown multi-task gradient method {name!r}; valid names: {', '.join(sorted(METHODS))}"
    )
  return METHODS[key](**kwargs)
