"""SMART's smoothness-inducing adversarial regularizer, added to each task's loss.

Jiang et al., "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural Language
Models through Principled Regularized Optimization" (ACL 2020), eq. 1-2 and Algorithm 1
(config.train.smart; docs/methods.md, "SMART"). Task t's objective becomes

    L_t(θ) + λ_s R_s(θ),    R_s(θ) = mean_i ℓ_s(f(x_i + δ_i*; θ), f(x_i; θ))

over the task's real examples i (weight 1; padding rows and empty slots have 0), where x_i
are the looked-up word vectors of example i's tokens (`mtl_jax.step.WORD_VECTORS`, the
input Hugging Face calls `inputs_embeds`) and f is the task's head output. δ* comes from
K steps of projected ascent on the divergence from the clean outputs, held fixed:

    δ ← ν,  ν ~ N(0, σ² I) on real tokens (0 on padding)
    K times:  g ← ∇_δ D(f(x + δ), sg f(x))
              g̃ ← g / ‖g‖                       per token: ‖·‖_∞ (norm="inf") or ‖·‖_2
              δ ← Π_{‖δ‖ ≤ ε}(δ + η g̃)            per token, in the same norm
    δ* = sg(δ)      (the regularizer's gradient does not flow through the ascent)

sg is stop-gradient. The divergences, by the task's loss (`tasks.TaskSpec.loss`):
  cross_entropy (class logits)   D = KL(P_adv ‖ P_clean);  ℓ_s = KL(sg P_adv ‖ P_clean)
                                 + KL(sg P_clean ‖ P_adv), each direction differentiating
                                 its second distribution only (mt-dnn's SymKlCriterion)
  binary_cross_entropy (a logit) the same on Bernoulli(sigmoid(z)) (2-class logits [z, 0])
  mse (a score)                  D = ℓ_s = (f_adv − f_clean)², differentiated through both
A head that also outputs its score on the unit scale (`sts_unit`, heads.sts_loss=cosine)
is compared on that scale, the one its loss trains.

Dropout: the perturbed forwards draw the clean forward's dropout masks (its key), so
f(x + δ) and f(x) are one sub-network and differ by δ alone, and D(δ = 0) = 0 as in the
paper. mt-dnn runs both forwards in train mode with fresh masks (PyTorch draws new ones per
call): there D(δ = 0) is the divergence between two dropout masks (R-Drop's regularizer,
another method), and at σ = 1e-5 the ascent's gradient is that first-order mask
difference rather than the direction in which f changes fastest. Shared keys also keep a
step a function of (seed, step), like its dropout.

Where this differs from mt-dnn's `SmartPerturbation` (each choice is the paper's):
the ascent differentiates KL itself, not `stable_kl`'s surrogate with the log-probabilities
replaced by detached log-odds; the gradient alone is normalised and δ is projected onto the
ε ball, where the reference normalises δ + ηg to unit norm (its `epsilon` is a division
guard), so its δ ends every ascent at norm 1; and the perturbation is added to the word
vectors, where mt-dnn feeds the embedding layer's output back in as `inputs_embeds`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mtl_jax import tasks

NORMS = ("inf", "l2")
# The stream of the initial noise ν: folded into a lane's dropout key, so it is a function
# of (seed, step, lane) as the dropout masks are (`mtl_jax.step.dropout_keys`).
NOISE_STREAM = 0x534D4152  # "SMAR"


@dataclasses.dataclass(frozen=True)
class SmartConfig:
  """config.train.smart; the paper's symbols in the comments, its GLUE values as defaults."""

  weight: float = 0.0  # λ_s; 0 = off.
  epsilon: float = 1e-5  # ε: radius of each token's ball.
  step_size: float = 1e-3  # η.
  noise_std: float = 1e-5  # σ.
  ascent_steps: int = 1  # K (the paper's T_x̃); 0 = the noise alone.
  norm: str = "inf"  # inf | l2: the per-token norm of the normalisation and the ball.

  def __post_init__(self):
    def check(ok: bool, key: str, message: str) -> None:
      if not ok:
        raise ValueError(f"train.smart.{key}: {message}, got {getattr(self, key)!r}")

    for key in ("weight", "epsilon", "step_size", "noise_std"):
      value = getattr(self, key)
      check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        key,
        "must be a finite number",
      )
    check(self.weight >= 0, "weight", "must be >= 0 (0 = off)")
    check(self.epsilon > 0, "epsilon", "must be > 0 (the radius of the perturbation ball)")
    check(self.step_size > 0, "step_size", "must be > 0")
    check(self.noise_std > 0, "noise_std", "must be > 0 (the ascent starts from noise)")
    steps = self.ascent_steps
    check(
      isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0,
      "ascent_steps",
      "must be an integer >= 0",
    )
    check(self.norm in NORMS, "norm", f"must be one of {NORMS}")


# --- Divergences between a task's perturbed and clean head outputs


def _log_probs(loss: str, out: jax.Array) -> jax.Array:
  """Log-probabilities over the last axis: softmax of class logits; a logit z of binary
  cross-entropy is a Bernoulli, whose two log-probabilities log sigmoid(±z) are those of
  the 2-class logits [z, 0]."""
  if loss == "binary_cross_entropy":
    return jnp.stack([jax.nn.log_sigmoid(out), jax.nn.log_sigmoid(-out)], axis=-1)
  return jax.nn.log_softmax(out, axis=-1)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p ‖ q) = Σ p (log p − log q) over the last axis."""
  return (jnp.exp(log_p) * (log_p - log_q)).sum(-1)


def divergence(loss: str, adv: jax.Array, clean: jax.Array) -> jax.Array:
  """D(f_adv, f_clean) per example, what the ascent maximises (the caller holds `clean`
  fixed): KL(P_adv ‖ P_clean), or the squared error of a score (loss "mse")."""
  if loss == "mse":
    return (adv - clean) ** 2
  return _kl(_log_probs(loss, adv), _log_probs(loss, clean))


def symmetric_divergence(loss: str, adv: jax.Array, clean: jax.Array) -> jax.Array:
  """ℓ_s(f_adv, f_clean) per example, the regularizer: KL(sg P_adv ‖ P_clean) +
  KL(sg P_clean ‖ P_adv) (its gradient reaches each side through one direction only, as
  in mt-dnn's SymKlCriterion), or the squared error of a score, through both sides."""
  if loss == "mse":
    return (adv - clean) ** 2
  a, c = _log_probs(loss, adv), _log_probs(loss, clean)
  sg = jax.lax.stop_gradient
  return _kl(sg(a), c) + _kl(sg(c), a)


def task_divergence(
  adv: dict,
  clean: dict,
  weights: jax.Array,
  task,
  symmetric: bool = False,
  specs: tuple[tasks.TaskSpec, ...] = tasks.DEFAULT,
) -> jax.Array:
  """The mean divergence over task `task`'s real examples (`weights`, 0 for padding) of
  two `TaskHeads` outputs; `task` indexes `specs` (the run's tasks) and may be traced. The head output
  and its rows are those `mtl_jax.step.task_loss` reads."""
  fn = symmetric_divergence if symmetric else divergence

  def of(spec: tasks.TaskSpec):
    def mean():
      name = f"{spec.output}_unit" if f"{spec.output}_unit" in clean else spec.output
      d = fn(spec.base_loss, adv[name], clean[name])
      w = weights[: d.shape[0]]
      return (d * w).sum() / jnp.maximum(w.sum(), 1.0)

    return mean

  return jax.lax.switch(task, [of(spec) for spec in specs])


# --- The projected ascent (Algorithm 1, lines 4-8)


def _token_norm(x: jax.Array, norm: str) -> jax.Array:
  if norm == "inf":
    return jnp.abs(x).max(-1, keepdims=True)
  return jnp.sqrt((x * x).sum(-1, keepdims=True))


def normalize(g: jax.Array, norm: str) -> jax.Array:
  """g / ‖g‖ per token (the last axis is a token's vector); 0 where g is 0 (padding)."""
  size = _token_norm(g, norm)
  return g / jnp.where(size > 0, size, 1.0)


def project(delta: jax.Array, epsilon: float, norm: str) -> jax.Array:
  """Each token's δ onto the ball ‖δ‖ ≤ ε: clipped coordinates for "inf", rescaled for "l2"."""
  if norm == "inf":
    return jnp.clip(delta, -epsilon, epsilon)
  size = _token_norm(delta, norm)
  return delta * jnp.minimum(1.0, epsilon / jnp.where(size > 0, size, epsilon))


def ascend(divergence_at: Callable[[jax.Array], jax.Array], delta: jax.Array, config: SmartConfig):
  """`config.ascent_steps` projected ascent steps on `divergence_at` (δ -> a scalar) from δ."""

  def step(_, d):
    g = jax.grad(divergence_at)(d)
    return project(d + config.step_size * normalize(g, config.norm), config.epsilon, config.norm)

  return jax.lax.fori_loop(0, config.ascent_steps, step, delta)


def initial_noise(key: jax.Array, token_mask: jax.Array, hidden: int, std: float) -> jax.Array:
  """ν ~ N(0, σ² I) of the word vectors [..., L, hidden], 0 on padding tokens (mask 0)."""
  noise = jax.random.normal(key, (*token_mask.shape, hidden), jnp.float32)
  return std * noise * token_mask[..., None].astype(jnp.float32)


def regularizer(
  apply: Callable[[Any, jax.Array], dict],
  variables: Any,
  clean: dict,
  weights: jax.Array,
  token_mask: jax.Array,
  task,
  key: jax.Array,
  hidden: int,
  config: SmartConfig,
  specs: tuple[tasks.TaskSpec, ...] = tasks.DEFAULT,
) -> jax.Array:
  """R_s of one task's batch (the module docstring; λ_s not applied).

  apply(variables, δ) -> the heads' outputs with δ [..., L, hidden] added to the word
  vectors (the forward that gave `clean`, same dropout key); `variables` are what the
  caller differentiates (params, word vectors): the ascent sees them and `clean` through
  stop-gradient, so only the final ℓ_s contributes to their gradient. `key`: the lane's
  dropout key (the noise draws from a stream folded into it)."""
  sg = jax.lax.stop_gradient
  fixed, target = sg(variables), sg(clean)

  def divergence_at(delta):
    return task_divergence(apply(fixed, delta), target, weights, task, specs=specs)

  noise = initial_noise(jax.random.fold_in(key, NOISE_STREAM), token_mask, hidden, config.noise_std)
  delta = sg(ascend(divergence_at, noise, config))
  return task_divergence(apply(variables, delta), clean, weights, task, True, specs)
