"""SMART (mtl_jax.smart) against NumPy transcriptions of the paper's formulas (Jiang et al.
2020, eq. 2 and Algorithm 1; the symmetric KL with mt-dnn's stop-gradients): the
divergences and their gradients on random outputs, the normalised projected ascent, and
the regularized loss and its gradient on the tiny random BERT for every task; weight 0
is the plain step; per-task gradients (packed with slots and unpacked, LoRA and full
fine-tuning) and a whole train step with SMART on."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import write_tiny_bert

from mtl_jax import grad as mtlgrad
from mtl_jax import smart, step
from mtl_jax.data import batching, packing
from mtl_jax.data.batching import Encoded
from mtl_jax.models import adapters, multitask

S = 8  # Sequences per task.
KINDS = {"sst": "cross_entropy", "quora": "binary_cross_entropy", "sts": "mse"}
# Large enough that the regularizer stands well above float32 rounding on the tiny model,
# and that the second ascent step clips some coordinates and not others.
CFG = smart.SmartConfig(weight=2.0, epsilon=1.5e-2, step_size=5e-3, noise_std=5e-3, ascent_steps=2)


# -------------------------------------------------------------------------------------
# NumPy transcriptions (float64)
# -------------------------------------------------------------------------------------


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_kl(kind, a, c):
  """KL(P_a ‖ P_c) per example: categorical over class logits, or Bernoulli(sigmoid)."""
  if kind == "binary_cross_entropy":
    p, q = np_sigmoid(a), np_sigmoid(c)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
  lp, lq = np_log_softmax(a), np_log_softmax(c)
  return (np.exp(lp) * (lp - lq)).sum(-1)


def np_divergence(kind, a, c):
  return (a - c) ** 2 if kind == "mse" else np_kl(kind, a, c)


def np_symmetric(kind, a, c):
  return (a - c) ** 2 if kind == "mse" else np_kl(kind, a, c) + np_kl(kind, c, a)


def np_normalize(g, norm):
  size = (
    np.abs(g).max(-1, keepdims=True) if norm == "inf" else np.linalg.norm(g, axis=-1)[..., None]
  )
  return np.divide(g, size, out=np.zeros_like(g), where=size > 0)


def np_project(d, eps, norm):
  if norm == "inf":
    return np.clip(d, -eps, eps)
  size = np.linalg.norm(d, axis=-1)[..., None]
  return d * np.minimum(1.0, eps / np.where(size > 0, size, eps))


def np_ascent(grad, delta, cfg):
  """Algorithm 1, lines 5-7, with the gradient from `grad` (jax)."""
  for _ in range(cfg.ascent_steps):
    g = np.asarray(grad(jnp.asarray(delta, jnp.float32)), np.float64)
    delta = np_project(delta + cfg.step_size * np_normalize(g, cfg.norm), cfg.epsilon, cfg.norm)
  return delta


def weighted_mean(x, w):
  return float((x * w).sum() / max(w.sum(), 1.0))


# -------------------------------------------------------------------------------------
# The pieces on random outputs
# -------------------------------------------------------------------------------------


def _outputs(rng, n=6):
  return {
    "sst": rng.normal(0, 2, (n, 5)),
    "quora": rng.normal(0, 2, n),
    "sts": rng.uniform(0, 5, n),
  }


@pytest.mark.parametrize("task", list(KINDS))
def test_divergences_and_their_gradients_match_numpy(task):
  rng = np.random.default_rng(0)
  kind, adv, clean = KINDS[task], _outputs(rng)[task], _outputs(rng)[task]
  a32, c32 = jnp.asarray(adv, jnp.float32), jnp.asarray(clean, jnp.float32)
  np.testing.assert_allclose(
    smart.divergence(kind, a32, c32), np_divergence(kind, adv, clean), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    smart.symmetric_divergence(kind, a32, c32), np_symmetric(kind, adv, clean), rtol=1e-4
  )
  # The gradient of KL(sg P_adv ‖ P_clean) + KL(sg P_clean ‖ P_adv) reaches each side
  # through one direction only: P_side - P_other on its logits (the full symmetric KL's
  # gradient has another term); the squared error's reaches both sides.
  ga, gc = jax.grad(lambda a, c: smart.symmetric_divergence(kind, a, c).sum(), (0, 1))(a32, c32)
  if kind == "mse":
    want_a = 2 * (adv - clean)
  elif kind == "binary_cross_entropy":
    want_a = np_sigmoid(adv) - np_sigmoid(clean)
  else:
    want_a = np.exp(np_log_softmax(adv)) - np.exp(np_log_softmax(clean))
  np.testing.assert_allclose(ga, want_a, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gc, -want_a, rtol=1e-4, atol=1e-6)


def test_task_divergence_is_a_mean_over_real_examples_of_the_trained_output():
  rng = np.random.default_rng(1)
  adv, clean = _outputs(rng), _outputs(rng)
  weights = np.asarray([1, 1, 0, 1, 0, 0, 1, 1], np.float32)  # S rows; pairs read the first N.
  for t, (task, kind) in enumerate(KINDS.items()):
    n = adv[task].shape[0]
    for symmetric, fn in ((False, np_divergence), (True, np_symmetric)):
      got = smart.task_divergence(adv, clean, jnp.asarray(weights), t, symmetric)
      want = weighted_mean(fn(kind, adv[task], clean[task]), weights[:n])
      np.testing.assert_allclose(got, want, rtol=1e-4)
  # heads.sts_loss=cosine: STS is compared on the unit scale its loss trains.
  unit_adv, unit_clean = dict(adv, sts_unit=adv["sts"] / 5), dict(clean, sts_unit=clean["sts"] / 5)
  got = smart.task_divergence(unit_adv, unit_clean, jnp.asarray(weights), 2)
  want = weighted_mean((adv["sts"] / 5 - clean["sts"] / 5) ** 2, weights[:6])
  np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("norm", smart.NORMS)
def test_normalize_project_and_ascent_match_numpy(norm):
  rng = np.random.default_rng(2)
  g = rng.normal(0, 1, (2, 5, 8))
  g[1, 3] = 0  # A padding token: no gradient.
  np.testing.assert_allclose(smart.normalize(jnp.asarray(g), norm), np_normalize(g, norm), 1e-6)
  d = rng.normal(0, 0.3, (2, 5, 8))
  np.testing.assert_allclose(
    smart.project(jnp.asarray(d), 0.4, norm), np_project(d, 0.4, norm), 1e-6
  )
  # Three projected ascent steps on a smooth nonlinear function of δ that, as the model's
  # outputs, does not depend on padding tokens.
  w = jnp.asarray(rng.normal(0, 1, (8, 8)), jnp.float32)
  real = jnp.ones((2, 5, 1)).at[1, 3].set(0.0)
  f = lambda delta: jnp.sin((real * delta) @ w).sum() + ((real * delta) ** 2).sum()
  cfg = dataclasses.replace(CFG, epsilon=0.05, step_size=0.02, ascent_steps=3, norm=norm)
  delta0 = 0.01 * rng.normal(0, 1, (2, 5, 8))
  delta0[1, 3] = 0
  got = jax.jit(lambda d: smart.ascend(f, d, cfg))(jnp.asarray(delta0, jnp.float32))
  want = np_ascent(jax.grad(f), delta0, cfg)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert np.abs(want - delta0).max() > 0.01  # It moved.
  if norm == "inf":
    assert np.isclose(np.abs(want).max(), 0.05) and (np.abs(want) < 0.049).any()  # Clipped some.
  assert np.all(want[1, 3] == 0)  # Padding stays unperturbed.


# -------------------------------------------------------------------------------------
# On the tiny random BERT (one of its two layers: half the compilation, the same code)
# -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_ref, tmp_path_factory):
  ref = {k: v for k, v in tiny_bert_ref.items() if ".layer.1." not in k}
  config = json.loads(str(ref["config_json"]))
  ref["config_json"] = json.dumps(dict(config, num_hidden_layers=1))
  return write_tiny_bert(tmp_path_factory.mktemp("one_layer_bert"), ref)


def _encoded(task: str, rng: np.random.Generator, n: int = 24) -> Encoded:
  def seq():
    return np.asarray([2, *rng.integers(5, 100, rng.integers(1, 10)), 3], np.int32)

  labels = (
    rng.integers(0, 5, n)
    if task == "sst"
    else rng.integers(0, 2, n)
    if task == "quora"
    else rng.uniform(0, 5, n)
  ).astype(np.float32)
  second = None if task == "sst" else [seq() for _ in range(n)]
  ids = [f"{task}{i}" for i in range(n)]
  return Encoded(task, "train", ids, [seq() for _ in range(n)], second, labels)


SLOTS = packing.PackPlan((16, 32), slots=(2, 1, 1))  # SST over two lanes.
KEYS = jax.random.split(jax.random.key(7), 3)


@functools.cache
def _batch(plan=None):
  rng = np.random.default_rng(0)
  data = [_encoded(t, rng) for t in KINDS]
  batch = batching.train_batch(data, 0, S, 0, (16,), plan=plan)
  batch["weights"][0, 3] = 0.0  # A padding row: SMART averages over real examples only.
  return batch


def _lane(batch, k):
  return {name: v[k] for name, v in batch.items()}


@functools.cache
def _model(bert_dir, mode="lora"):
  """(model, trainable, frozen, jitted functions) with dropout on (the perturbed forwards
  must share the clean masks), every leaf perturbed so adapters (B = 0 at init) and heads
  matter. The jitted functions are shared by the tests (compiling is most of their time)."""
  lora = adapters.LoraConfig(kind=mode, rank=4, alpha=8.0) if mode in adapters.KINDS else None
  spec = multitask.ModelSpec(bert_dir, mode, lora, head_dropout=0.1)
  model, params = multitask.build(spec, jax.random.key(0))
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params
  )
  trainable, frozen = multitask.split(params, multitask.trainable_mask(params, mode))

  def forward(params, lane, task, key, delta):
    """The heads' outputs with δ added to the looked-up word vectors (None: clean)."""
    perturbations = None if delta is None else {"encoder": {"embeddings": {"word_vectors": delta}}}
    return multitask.apply(
      model, params, lane, deterministic=False, task=task, rngs={"dropout": key},
      perturbations=perturbations,
    )  # fmt: skip

  jitted = {
    "forward": jax.jit(forward),
    "loss": jax.jit(step.make_loss_fn(model, CFG)),
    "plain_loss": jax.jit(step.make_loss_fn(model)),
    "grad": jax.jit(jax.grad(step.make_loss_fn(model, CFG))),
    "per_task": jax.jit(step.make_per_task_grads(model, CFG)),
  }
  return model, trainable, frozen, jitted, forward


def _divergence_gradient(forward):
  """∇_δ D(f(x + δ), sg f(x)) of a task (traced index), D written out per task."""

  def d(params, lane, t, key, delta, clean):
    out = forward(params, lane, t, key, delta)

    def sst():
      lp, lq = jax.nn.log_softmax(out["sst"]), jax.nn.log_softmax(clean["sst"])
      return (jnp.exp(lp) * (lp - lq)).sum(-1)

    def quora():
      p, q = jax.nn.sigmoid(out["quora"]), jax.nn.sigmoid(clean["quora"])
      return p * jnp.log(p / q) + (1 - p) * jnp.log((1 - p) / (1 - q))

    def sts():
      return (out["sts"] - clean["sts"]) ** 2

    pad = lambda x: jnp.pad(x, (0, S - x.shape[0]))  # Pair tasks have S / 2 outputs.
    per = jax.lax.switch(t, [lambda: pad(sst()), lambda: pad(quora()), lambda: pad(sts())])
    w = lane["weights"] * (jnp.arange(S) < jnp.where(t == 0, S, S // 2))  # Rows with outputs.
    return (per * w).sum() / w.sum()

  return jax.jit(jax.grad(d, argnums=4))


@functools.cache
def _transcribed(bert_dir, mode="lora", plan=None):
  """Per lane k: (clean outputs, δ* of Algorithm 1 in NumPy with D's gradient from jax, the
  regularizer R_s in NumPy on the model's outputs at δ*)."""
  model, trainable, frozen, jitted, forward = _model(bert_dir, mode)
  params = multitask.merge(trainable, frozen)
  batch = _batch(plan)
  lane_tasks, lane_keys, _ = step.lanes(batch, jnp.arange(3), KEYS)
  grad_d = _divergence_gradient(forward)
  out = []
  for k, t in enumerate(np.asarray(lane_tasks)):
    lane, key, task = _lane(batch, k), lane_keys[k], list(KINDS)[t]
    clean = jitted["forward"](params, lane, jnp.asarray(t), key, None)
    noise = jax.random.normal(
      jax.random.fold_in(key, smart.NOISE_STREAM),
      (*lane["input_ids"].shape, model.config.hidden_size),
    )
    mask = np.asarray(lane["attention_mask"], np.float64)[..., None]
    delta0 = CFG.noise_std * np.asarray(noise, np.float64) * mask
    grad = lambda delta: grad_d(params, lane, jnp.asarray(t), key, delta, clean)
    delta = np_ascent(grad, delta0, CFG)
    adv = jitted["forward"](params, lane, jnp.asarray(t), key, jnp.asarray(delta, jnp.float32))
    a, c = (np.asarray(o[task], np.float64) for o in (adv, clean))
    r = weighted_mean(np_symmetric(KINDS[task], a, c), lane["weights"][: c.shape[0]])
    out.append((clean, delta, r))
  return out


@pytest.mark.parametrize("t", range(3), ids=list(KINDS))
def test_regularized_loss_is_the_loss_plus_weight_times_the_transcribed_regularizer(bert_dir, t):
  _, trainable, frozen, jitted, _ = _model(bert_dir)
  _, delta, r = _transcribed(bert_dir)[t]
  args = (trainable, frozen, _lane(_batch(), t), jnp.asarray(t), KEYS[t])
  objective, plain = float(jitted["loss"](*args)), float(jitted["plain_loss"](*args))
  assert r > 1e-5  # Well above float32 rounding: the check below can fail.
  np.testing.assert_allclose(objective - plain, CFG.weight * r, rtol=2e-3)
  clipped = np.isclose(np.abs(delta), CFG.epsilon)
  assert clipped.any() and (~clipped & (delta != 0)).any()  # The ball bound some coordinates.
  assert np.all(delta[np.asarray(_batch()["attention_mask"][t]) == 0] == 0)  # Not on padding.


def test_regularizer_gradient_holds_the_perturbation_fixed_and_stops_each_kl_side(bert_dir):
  """The gradient of the SMART objective is that of L + λ mean ℓ_s(f(x + δ*), f(x)) with δ*
  a constant (no gradient through the ascent) and, in each KL direction, the first
  distribution stop-gradiented (mt-dnn's SymKlCriterion), written out here for SST."""
  model, trainable, frozen, jitted, forward = _model(bert_dir)
  lane, key, t = _lane(_batch(), 0), KEYS[0], jnp.asarray(0)
  _, delta, _ = _transcribed(bert_dir)[0]
  plain_fn = step.make_loss_fn(model)
  w = jnp.asarray(lane["weights"])
  sg = jax.lax.stop_gradient

  def written_out(trainable):
    params = multitask.merge(trainable, frozen)
    lc = jax.nn.log_softmax(forward(params, lane, t, key, None)["sst"])
    la = jax.nn.log_softmax(forward(params, lane, t, key, jnp.asarray(delta, jnp.float32))["sst"])
    kl = lambda lp, lq: (jnp.exp(lp) * (lp - lq)).sum(-1)
    r = ((kl(sg(la), lc) + kl(sg(lc), la)) * w).sum() / w.sum()
    return plain_fn(trainable, frozen, lane, t, key) + CFG.weight * r

  got = jitted["grad"](trainable, frozen, lane, t, key)
  want = jax.jit(jax.grad(written_out))(trainable)
  plain = jax.jit(jax.grad(plain_fn))(trainable, frozen, lane, t, key)
  moved = 0.0
  for g, h, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(plain)):
    np.testing.assert_allclose(g, h, rtol=1e-3, atol=1e-6)
    moved = max(moved, float(jnp.abs(h - p).max()))
  assert moved > 1e-4  # The regularizer's gradient is there (not only the task loss's).


@functools.cache
def _per_task(bert_dir, mode, plan):
  _, trainable, frozen, jitted, _ = _model(bert_dir, mode)
  return jitted["per_task"](trainable, frozen, _batch(plan), jnp.arange(3), KEYS)


@pytest.mark.parametrize(
  "mode, plan", [("lora", None), ("full", SLOTS)], ids=["lora", "full-slots"]
)
def test_each_tasks_gradient_carries_its_own_regularizer(bert_dir, mode, plan):
  """Per-task gradients with SMART (the vmapped lanes; full fine-tuning's word table through
  the lanes' word vectors; slots summed into tasks) equal autodiff of each task's SMART
  objective (the test above), summed over its lanes."""
  _, trainable, frozen, jitted, _ = _model(bert_dir, mode)
  batch = _batch(plan)
  _, grads = _per_task(bert_dir, mode, plan)
  lane_tasks, lane_keys, _ = step.lanes(batch, jnp.arange(3), KEYS)
  want = [None] * 3
  for k, t in enumerate(np.asarray(lane_tasks)):
    g = jitted["grad"](trainable, frozen, _lane(batch, k), lane_tasks[k], lane_keys[k])
    want[t] = g if want[t] is None else jax.tree.map(jnp.add, want[t], g)
  for t in range(3):
    row = jax.tree.map(lambda g: g[t], grads)
    for a, b in zip(jax.tree.leaves(row), jax.tree.leaves(want[t])):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
  if mode == "full":  # Each task's word-table gradient holds its own tokens' rows only.
    table = lambda tree: tree["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert float(jnp.abs(table(grads)).max()) > 1e-4


def test_weight_zero_is_exactly_the_plain_step(bert_dir):
  model, trainable, frozen, *_ = _model(bert_dir)
  tx = optax.chain(mtlgrad.pcgrad(), optax.adamw(1e-3))
  state = step.TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))
  text = lambda smart_config: (
    jax.jit(step.make_train_step(model, tx, (0, 1, 2), 0, smart=smart_config))
    .lower(state, frozen, _batch())
    .as_text()
  )
  off = smart.SmartConfig(weight=0.0, epsilon=0.5, ascent_steps=3, norm="l2")
  assert text(off) == text(None)  # The same program.


def test_a_train_step_with_smart_runs_packed_with_slots_on_full_fine_tuning(bert_dir):
  model, trainable, frozen, jitted, _ = _model(bert_dir, "full")
  tx = optax.chain(
    mtlgrad.shared_only(mtlgrad.pcgrad(), multitask.is_shared(trainable)), optax.sgd(0.1)
  )
  state = step.TrainState(jnp.asarray(0, jnp.int32), trainable, tx.init(trainable))
  make = step.make_train_step(model, tx, (0, 1, 2), 0, smart=CFG)
  batch = _batch(SLOTS)
  new, metrics = jax.jit(make)(state, frozen, batch)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((new, metrics)))
  assert float(metrics["l2_updates"]) > 0
  # The logged losses are the raw ones (each task's lanes' plain losses, the step's keys).
  lane_tasks, lane_keys, _ = step.lanes(batch, jnp.arange(3), step.dropout_keys(0, 0, 3))
  raw = np.zeros(3)
  for k, t in enumerate(np.asarray(lane_tasks)):
    raw[t] += jitted["plain_loss"](trainable, frozen, _lane(batch, k), lane_tasks[k], lane_keys[k])
  np.testing.assert_allclose(metrics["task_loss"], raw, rtol=1e-5)
