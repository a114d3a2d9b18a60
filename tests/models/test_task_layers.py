"""PALs and low-rank task layers (mtl_jax.models.task_layers) inside the encoder and the trainer.

The layers are checked against a NumPy transcription of the reference forward passes
(Bert-n-Pals `modeling.py`: BERTPals, BERTLowRank, and BERTLayer's `mult` branch).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_data, tiny_config
from flax import traverse_util
from scipy.special import erf

from mtl_jax import train
from mtl_jax.config import resume, run_spec
from mtl_jax.models import multitask, task_layers
from mtl_jax.models.bert import BertConfig, BertEncoder
from mtl_jax.models.task_layers import TaskLayer, TaskLayerConfig
from mtl_jax.step import make_per_task_grads
from mtl_jax.tools import embed, export

T = 3


def _gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _dense(p, t, x):
  return x @ np.asarray(p["kernel"][t]) + np.asarray(p["bias"][t])


def _reference_ts(kind, params, proj, h, mask, t):
  """TS_t(h) as the reference code computes it, in NumPy."""
  if kind == "low_rank":
    return _dense(params["up"], t, _gelu(_dense(params["down"], t, h)))
  x = _dense(proj["down"], t, h)
  b, l, s = x.shape
  heads = task_layers.PALS_HEADS
  split = lambda y: y.reshape(b, l, heads, s // heads).transpose(0, 2, 1, 3)
  q, k, v = (split(_dense(params[n], t, x)) for n in ("query", "key", "value"))
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(s // heads)
  scores = scores + np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, s)
  return _gelu(_dense(proj["up"], t, context))


def _randomize(tree, seed):
  """Every leaf random (the zero-initialised V_D too), so the check is not trivial."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("kind", task_layers.KINDS)
def test_task_layer_matches_reference_forward(kind):
  cfg = TaskLayerConfig(kind, T, size=12)
  hidden, b, l = 16, 2, 5
  h = np.random.default_rng(0).normal(size=(b, l, hidden)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  mask_bias = jnp.where(jnp.asarray(mask)[:, None, None, :] > 0, 0.0, -1e30)
  proj_module = task_layers.PalsProjections(cfg, hidden)
  proj = None
  if kind == "pals":
    proj = _randomize(proj_module.init(jax.random.key(1), jnp.asarray(h), 0)["params"], 2)

  layer = TaskLayer(cfg)
  args = lambda t: (
    jnp.asarray(h),
    mask_bias,
    jnp.asarray(t),
    proj_module.bind({"params": proj}) if proj else None,
    True,
  )
  params = _randomize(layer.init(jax.random.key(3), *args(0))["params"], 4)
  for t in range(T):
    got = np.asarray(layer.apply({"params": params}, *args(t)))
    want = _reference_ts(kind, params, proj, h, mask, t)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_widths_scale_with_the_hidden_size():
  pals, low = TaskLayerConfig("pals", T), TaskLayerConfig("low_rank", T)
  assert (pals.width(768), low.width(768)) == (204, 100)  # The paper's sizes for BERT-base.
  assert (pals.width(384), low.width(384)) == (102, 50)  # The bundled MiniLM.
  assert pals.width(32) % task_layers.PALS_HEADS == 0
  assert TaskLayerConfig("pals", T, size=36).width(768) == 36
  with pytest.raises(ValueError, match="multiple of its 6"):
    TaskLayerConfig("pals", T, size=100)


def _encoder(kind):
  cfg = BertConfig(
    vocab_size=50,
    hidden_size=24,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    task_layers=TaskLayerConfig(kind, T) if kind else None,
  )
  return BertEncoder(cfg)


@pytest.mark.parametrize("kind", task_layers.KINDS)
def test_encoder_with_task_layers(kind):
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, size=(2, 6)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, 4:].set(0)
  base = _encoder(None)
  base_params = base.init(jax.random.key(0), ids, mask)["params"]
  model = _encoder(kind)
  params = model.init(jax.random.key(0), ids, mask, None, True, 0)["params"]
  flat = traverse_util.flatten_dict(params)
  new = {p: v for p, v in flat.items() if task_layers.is_task_specific(p)}
  assert new and all(v.shape[0] == T for v in new.values())  # One slice per task.
  assert (("task_proj", "down", "kernel") in flat) == (kind == "pals")  # Shared by layers.
  # The pretrained weights are where they were; V_D = 0 makes step 0 the base encoder.
  params = traverse_util.unflatten_dict({**flat, **traverse_util.flatten_dict(base_params)})
  want = base.apply({"params": base_params}, ids, mask)
  for t in range(T):
    np.testing.assert_allclose(
      model.apply({"params": params}, ids, mask, None, True, t), want, atol=1e-6
    )
  # Perturbing task 1's slices (randomly: LayerNorm would cancel a uniform shift) changes
  # task 1's encoder only.
  flat = traverse_util.flatten_dict(params)
  noise = _randomize(new, 5)
  for p in new:
    flat[p] = flat[p].at[1].add(noise[p][1])
  changed = traverse_util.unflatten_dict(flat)
  out = [model.apply({"params": changed}, ids, mask, None, True, t) for t in range(T)]
  np.testing.assert_allclose(out[0], want, atol=1e-6)
  np.testing.assert_allclose(out[2], want, atol=1e-6)
  assert np.abs(np.asarray(out[1]) - np.asarray(want)).max() > 1e-3
  with pytest.raises(ValueError, match="give the task"):
    model.apply({"params": params}, ids, mask)


def _pals_config(model_dir, kind="pals", mode="probe"):
  """A tiny run with task layers; the trainer's tests use the one-layer model (the layers
  are the same code in every encoder layer; half the compilation)."""
  config = tiny_config(model_dir, steps=2, learning_rate=1e-2)
  config.adapter.kind = mode
  config.adapter.task_layers = kind
  return config


@pytest.mark.parametrize("mode", ["probe", "lora", "full"])
def test_task_layers_train_in_every_mode_and_are_task_specific(one_layer_bert_dir, mode):
  config = _pals_config(one_layer_bert_dir, mode=mode)
  model, state, frozen, _ = train.init_state(run_spec.build(config))
  flat = traverse_util.flatten_dict(state.trainable)
  assert any(task_layers.is_task_specific(p) for p in flat)  # Trainable in every mode.
  shared = traverse_util.flatten_dict(multitask.is_shared(state.trainable))
  assert not any(shared[p] for p in flat if task_layers.is_task_specific(p))
  assert any(shared.values()) == (mode != "probe")

  # Task t's gradient reaches only slice t of the task layers.
  trainable = jax.tree.map(lambda x: x + 0.1, state.trainable)  # V_D != 0: V_E gets gradient.
  rng = np.random.default_rng(0)
  batch = {
    "input_ids": rng.integers(5, 100, size=(T, 4, 8)).astype(np.int32),
    "attention_mask": np.ones((T, 4, 8), np.int32),
    "token_type_ids": np.zeros((T, 4, 8), np.int32),
    "labels": np.array([[1, 2, 0, 4], [1, 0, 1, 0], [2.5, 1.0, 4.0, 0.5]], np.float32),
    "weights": np.ones((T, 4), np.float32),
  }
  keys = jax.random.split(jax.random.key(0), T)
  _, grads = jax.jit(make_per_task_grads(model))(trainable, frozen, batch, jnp.arange(T), keys)
  for path, g in traverse_util.flatten_dict(grads).items():
    if task_layers.is_task_specific(path):
      g = np.asarray(g)  # [task of the gradient, task slice, ...]
      for t in range(T):
        others = np.delete(g[t], t, axis=0)
        assert not others.any(), path
      assert any(np.abs(g[t, t]).max() > 0 for t in range(T)), path


@needs_data
@pytest.mark.parametrize(
  "kind, mode, method", [("pals", "probe", "pcgrad"), ("low_rank", "lora", "sum")]
)
def test_task_layers_train_end_to_end(one_layer_bert_dir, tmp_path, kind, mode, method):
  config = _pals_config(one_layer_bert_dir, kind, mode)
  config.grad.method = method
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["overall"])
  assert os.path.isfile(os.path.join(workdir, "predictions", "sst-dev-output.csv"))

  # The encoder differs per task: embedding needs the task; export refuses.
  loaded_model, params, tokenizer = embed.load_encoder(None, workdir, None)
  with pytest.raises(ValueError, match="give the task"):
    embed.embed(loaded_model, params, tokenizer, ["a good movie"], None, 16)
  out = {
    t: embed.embed(loaded_model, params, tokenizer, ["a good movie"], None, 16, task=t)
    for t in ("sst", "sts")
  }
  assert not np.allclose(out["sst"]["pooled"], out["sts"]["pooled"])
  with pytest.raises(export.ExportError, match="task-specific"):
    export.export(workdir, str(tmp_path / "export"))


def test_task_layer_config_errors(tiny_bert_dir):
  config = _pals_config(tiny_bert_dir, kind="none")
  config.adapter.task_layer_size = 12
  with pytest.raises(run_spec.ConfigError, match="adapter.task_layer_size"):
    run_spec.build(config)
  config.adapter.task_layers = "pals"
  config.adapter.task_layer_size = 100
  with pytest.raises(run_spec.ConfigError, match="multiple of its 6"):
    run_spec.build(config)
  config.adapter.task_layers = "houlsby"
  with pytest.raises(run_spec.ConfigError, match="unknown task layer kind 'houlsby'"):
    run_spec.build(config)


def test_configs_saved_before_task_layers_resume_as_none(tiny_bert_dir):
  config = tiny_config(tiny_bert_dir, steps=2)
  saved = json.loads(config.to_json_best_effort())
  del saved["adapter"]["task_layers"], saved["adapter"]["task_layer_size"]
  assert resume.resume_mismatches(saved, config) == []
  config.adapter.task_layers = "pals"
  assert [k for k, _, _ in resume.resume_mismatches(saved, config)] == ["adapter.task_layers"]
