"""Multi-task gradient methods as optax transforms, plus diagnostics.

Every method is a factory returning an ``optax.GradientTransformation`` whose
``update(updates, state, params=None)`` takes per-task gradients -- a pytree
whose every leaf has a leading task axis ``[T, *param.shape]`` -- and returns
ONE combined update with the parameter shapes, so that::

    from mtl_jax import grad as mtlgrad
    tx = optax.chain(mtlgrad.pcgrad(), optax.adamw(1e-3))

is a whole optimizer. ``tx.init`` receives the ordinary (unstacked) params.
Dot products are over the whole flattened update (all leaves together, as in
the papers): the methods work on the ``T x T`` Gram matrix ``G G^T`` of the
``[T, D]`` matrix ``G`` of flattened per-task updates and return weights or
coefficients for its rows (``G`` itself is never materialised; see
``_tree``). Randomness comes from a ``jax.random`` key in the state
(``seed``). Everything is jit-able; ``T`` is static (read from the leaves).

Output scale follows each method's paper / reference implementation, and
each method was checked against an independent reference
(``scripts/make_grad_fixtures.py``, ``tests/grad/test_grad_reference.py``; on
degenerate stacks -- opposite, zero, collinear, badly scaled --
``tests/grad/test_grad_degenerate.py``; tolerances in docs/methods.md):

* ``sum_tasks`` / ``mean_tasks`` / ``fixed(w)``: ``sum_i g_i`` / mean /
  ``sum_i w_i g_i``.
* ``rlw``: ``sum_i softmax(z)_i g_i``, ``z ~ N(0, I)`` per step.
* ``pcgrad``: ``sum_i g_i^PC`` (``reduction="sum"``, default) or the mean --
  torchjd ``PCGrad`` and LibMTL ``PCGrad`` for every visiting order.
* ``pcgrad_against_sum``: the sum, with the target projected against the sum
  of the others -- numpy reference.
* ``gradvac``: ``sum_i g_i^PC`` -- torchjd ``GradVac`` (multi-step, EMA state).
* ``mgda``: the min-norm point (weights sum to 1) -- cvxpy; LibMTL ``MGDA``
  for ``solver="frank_wolfe"``.
* ``cagrad``: mean-gradient scale, divided by ``1 + c^2`` (``rescale=1``) --
  the Cranial-XIX/LibMTL objective solved tightly, LibMTL and torchjd
  ``CAGrad``.
* ``upgrad`` / ``dualproj``: mean of the projections -- torchjd.
* ``imtl_g``: weights sum to 1 -- torchjd ``IMTLG``, LibMTL ``IMTL``.
* ``aligned_mtl``: ``G^T B (1/T)`` -- torchjd ``AlignedMTL``.
* ``nash_mtl``: ``sum_i alpha_i g_i`` with ``||.||^2 = T`` -- exact root,
  torchjd ``NashMTL``.
* ``graddrop``: masked sum -- torchjd ``GradDrop`` (same uniform draws).
* ``dwa``: ``sum_i w_i g_i``, Dynamic Weight Average (Liu et al. 2019, eq. 7)
  from the loss ratios of the last two windows of ``period`` steps; needs the
  losses: ``update(..., task_losses=losses)`` (an
  ``optax.GradientTransformationExtraArgs``; ``optax.chain`` and
  :func:`shared_only` forward the keyword, other methods ignore it) -- numpy
  reference (``tests/grad/test_grad_loss_weighting.py``).
* ``famo``: ``sum_i a_i g_i``, FAMO (Liu et al. 2023): weights ``z / (c D)`` from
  learned task logits (``z = softmax(w)``) and the losses; the logits learn from the
  change of each task's log-loss between updates (also needs ``task_losses``) -- numpy
  transcription of the reference (``scripts/make_famo_fixture.py``).

Uncertainty weighting (Kendall et al. 2018) has learnable log-variances: it is
on the loss side (``config.train.loss_weighting="uncertainty"``,
:func:`weighted_task_loss`, applied by ``mtl_jax.step``). IMTL-L and MGDA's
"loss" normalisation: not provided.

Per-task diagnostics: :func:`task_gradient_stats`; per parameter group (the per-group
Gram matrices sum to the global one): :func:`group_gradient_stats`. Pass ``num_tasks=T`` to a
factory to keep per-task stats in its state (e.g. PCGrad's ``removed_norm``
and ``num_projections``); read them with :func:`method_stats`. Per-task heads:
:func:`shared_only`. Layer-scoped surgery (one instance of a method per parameter
group, ``config.grad.scope="group"``): :func:`group_scoped`. By name:
:func:`get_method`, :data:`METHODS`; the methods that stay meaningful when a step
trains one task: :data:`LINEAR_METHODS`.
"""

from mtl_jax.grad._tree import tasks_to_matrix
from mtl_jax.grad.balancing import NashMTLState, aligned_mtl, imtl_g, nash_mtl
from mtl_jax.grad.basic import fixed, mean_tasks, rlw, sum_tasks
from mtl_jax.grad.diagnostics import group_gradient_stats, method_stats, task_gradient_stats
from mtl_jax.grad.loss_weighting import (
  LOSS_WEIGHTING_KEY,
  LOSS_WEIGHTINGS,
  DWAState,
  FAMOState,
  dwa,
  famo,
  uncertainty_params,
  weighted_task_loss,
)
from mtl_jax.grad.min_norm import cagrad, dualproj, mgda, upgrad
from mtl_jax.grad.projection import GradVacState, PCGradState, gradvac, pcgrad, pcgrad_against_sum
from mtl_jax.grad.registry import LINEAR_METHODS, METHODS, canonical_name, get_method
from mtl_jax.grad.scoped import GROUP_SCOPE_REFUSED, SCOPES, group_scoped
from mtl_jax.grad.shared import shared_only
from mtl_jax.grad.sign_dropout import GradDropState, graddrop

__all__ = [
  "GROUP_SCOPE_REFUSED",
  "SCOPES",
  "LINEAR_METHODS",
  "LOSS_WEIGHTINGS",
  "LOSS_WEIGHTING_KEY",
  "METHODS",
  "DWAState",
  "FAMOState",
  "GradDropState",
  "GradVacState",
  "NashMTLState",
  "PCGradState",
  "aligned_mtl",
  "cagrad",
  "canonical_name",
  "dualproj",
  "dwa",
  "famo",
  "fixed",
  "get_method",
  "graddrop",
  "group_gradient_stats",
  "group_scoped",
  "gradvac",
  "imtl_g",
  "mean_tasks",
  "method_stats",
  "mgda",
  "nash_mtl",
  "pcgrad",
  "pcgrad_against_sum",
  "rlw",
  "shared_only",
  "sum_tasks",
  "task_gradient_stats",
  "tasks_to_matrix",
  "uncertainty_params",
  "upgrad",
  "weighted_task_loss",
]
