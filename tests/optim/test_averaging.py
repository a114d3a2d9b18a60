"""mtl_jax.optim.averaging and train.ema_decay: the EMA of the parameters against a hand
computation and a NumPy recurrence, exact across an interrupted run, and what evaluation,
predictions, results.json and the tools use."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import interrupt_at, needs_data, tiny_config
from flax import traverse_util
from safetensors.numpy import load_file

from mtl_jax import train
from mtl_jax.config import run_spec
from mtl_jax.optim import averaging
from mtl_jax.runtime.checkpoint import Checkpointer
from mtl_jax.step import TrainState


def test_parameters_growing_by_one_a_step_average_to_nine_tenths_of_the_step():
  """params_n = n from 0: with beta_n = n / (9 + n), ema_n = 0.9 n by induction
  (n (0.9 (n - 1)) + 9 n) / (9 + n) = 0.9 n), until beta reaches the decay."""
  tx = averaging.ema_params(0.99)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  for n in range(1, 8):
    updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(averaging.averaged_params(state)["w"], 0.9 * n, rtol=1e-6)
  assert int(state.count) == 7


def test_ema_of_the_tiny_model_equals_a_numpy_recurrence(tiny_bert_dir):
  """Five steps of the configured optimizer with train.ema_decay=0.3 (beta_n = n/(9+n) for
  n <= 3, then 0.3): the EMA equals the recurrence run in float64 on the params after each
  step, the updates are those of the same optimizer without it (which keeps no average),
  and `train.evaluated_trainable` gives the EMA."""
  config, plain = tiny_config(tiny_bert_dir, ema_decay=0.3), tiny_config(tiny_bert_dir)
  config.grad.method = plain.grad.method = "sum"  # A small program to compile.
  spec = run_spec.build(config)
  params = train.init_state(spec)[1].trainable
  tx, tx_plain = spec.optimizer(params), run_spec.build(plain).optimizer(params)
  opt, opt_plain = tx.init(params), tx_plain.init(params)
  assert averaging.averaged_params(opt_plain) is None
  assert train.evaluated_trainable(TrainState(0, params, opt_plain)) is params
  flat = lambda t: {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(t).items()}
  update, update_plain = jax.jit(tx.update), jax.jit(tx_plain.update)
  expected = flat(params)
  rng = np.random.default_rng(0)
  for n in range(1, 6):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(3, *p.shape)), p.dtype), params)
    updates, opt = update(grads, opt, params)
    updates_plain, opt_plain = update_plain(grads, opt_plain, params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_plain), strict=True):
      np.testing.assert_array_equal(a, b)
    params = optax.apply_updates(params, updates)
    beta = min(0.3, n / (9 + n))
    now = flat(params)
    expected = {k: beta * e + (1 - beta) * now[k] for k, e in expected.items()}
    got = flat(train.evaluated_trainable(TrainState(n, params, opt)))
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=str(k))


# --- Whole runs: one straight run (its evaluations recorded) shared by the tests below


def _config(model_dir: str):
  """All three levers on, dev evaluated at step 2 and at the end (step 4)."""
  return tiny_config(
    model_dir, ema_decay=0.9, head_lr_multiplier=5.0, layer_lr_decay=0.8, eval_every=2
  )


@functools.cache
def _initial_state(model_dir: str):
  return train.init_state(run_spec.build(_config(model_dir)))[1]


def _state(model_dir: str, workdir: str, step: int | None = None):
  """The train state of `workdir`'s checkpoint at `step` (None: the latest)."""
  return Checkpointer(workdir, 1, 1).restore(_initial_state(model_dir), step)[0]


@pytest.fixture(scope="module")
def straight_run(tiny_bert_dir, tmp_path_factory):
  """(workdir, [params of each dev evaluation], [params of each test-split prediction])."""
  workdir = str(tmp_path_factory.mktemp("ema") / "straight")
  evaluated, predicted = [], []
  evaluate, predict_split = train.evaluate, train.predict_split

  def record_evaluate(predict_fn, params, *args, **kwargs):
    evaluated.append(jax.device_get(params))
    return evaluate(predict_fn, params, *args, **kwargs)

  def record_predict(predict_fn, params, *args, **kwargs):
    predicted.append(jax.device_get(params))
    return predict_split(predict_fn, params, *args, **kwargs)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(train, "evaluate", record_evaluate)
    m.setattr(train, "predict_split", record_predict)
    train.train_and_evaluate(_config(tiny_bert_dir), workdir)
  return workdir, evaluated, predicted


def _assert_same(params: dict, trainable: dict) -> None:
  """The leaves of `params` (a model's merged params) at the paths of `trainable` equal
  `trainable`'s, bitwise."""
  flat = traverse_util.flatten_dict(params)
  for path, value in traverse_util.flatten_dict(trainable).items():
    np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(value), err_msg=str(path))


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, train.RESULTS_JSON)) as f:
    return json.load(f)


@needs_data
def test_evaluation_predictions_results_and_tools_use_the_ema(
  straight_run, tiny_bert_dir, tmp_path
):
  from mtl_jax.tools import export

  workdir, evaluated, predicted = straight_run
  assert len(evaluated) == 2  # Step 2 and the final evaluation (step 4).
  for step, params in zip((2, 4), evaluated):
    state = _state(tiny_bert_dir, workdir, step)
    ema = averaging.averaged_params(state.opt_state)
    pairs = zip(jax.tree.leaves(ema), jax.tree.leaves(state.trainable))
    assert any(not np.array_equal(a, b) for a, b in pairs)  # The EMA is not the raw params.
    _assert_same(params, ema)
  assert len(predicted) == 2  # The test splits of SST and STS.
  for params in predicted:
    _assert_same(params, ema)
  assert _results(workdir)["evaluated_params"] == "ema"
  # The tools: predict and embed load through load_trained, export through restore.
  _assert_same(train.load_trained(workdir)[2], ema)
  info = export.export(workdir, str(tmp_path / "export"))
  assert info["source"]["params"] == "ema"
  heads = load_file(str(tmp_path / "export" / "heads.safetensors"))
  for path, value in traverse_util.flatten_dict(ema["heads"], sep="/").items():
    np.testing.assert_array_equal(heads[path], np.asarray(value))


@needs_data
def test_an_interrupted_run_resumes_to_the_same_ema_bitwise(
  straight_run, tiny_bert_dir, tmp_path, monkeypatch
):
  workdir, _, _ = straight_run
  resumed = str(tmp_path / "resumed")
  with monkeypatch.context() as m:
    interrupt_at(m, 3)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(_config(tiny_bert_dir), resumed)
  assert Checkpointer(resumed, 1, 1).latest_step() == 3
  train.train_and_evaluate(_config(tiny_bert_dir), resumed)  # The same command again.
  a, b = _state(tiny_bert_dir, workdir), _state(tiny_bert_dir, resumed)
  assert int(a.opt_state[-1].count) == int(b.opt_state[-1].count) == 4
  _assert_same(b.trainable, a.trainable)
  _assert_same(averaging.averaged_params(b.opt_state), averaging.averaged_params(a.opt_state))
  assert _results(workdir)["metrics"] == _results(resumed)["metrics"]
