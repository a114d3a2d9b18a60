"""mtl_jax.models.multitask (+ adapters.merge_all) on the tiny random BERT checkpoint."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mtl_jax.models import adapters, hf_io, multitask
from mtl_jax.models.bert import BertEncoder

ALL_TARGETS = adapters.TARGETS


def _inputs(seed=0, b=4, length=10, vocab=128):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, size=(b, length)).astype(np.int32)
  lengths = rng.integers(3, length + 1, size=b)
  lengths[0] = length
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = ids * mask
  tt = np.zeros_like(ids)
  tt[:, length // 2 :] = mask[:, length // 2 :]
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(tt)


@functools.cache
def _plain_fn(config):
  return jax.jit(lambda p, *x: BertEncoder(config).apply({"params": p}, *x))


@functools.cache
def _model_fn(config, pooling):
  model = multitask.MultitaskModel(config, pooling)
  return jax.jit(lambda p, *x: model.apply({"params": p}, *x, method=model.embed)[0])


def _plain_hidden(config, encoder_params, inputs):
  """The plain (adapter-free) BertEncoder's last hidden state."""
  return np.asarray(_plain_fn(dataclasses.replace(config, lora=None))(encoder_params, *inputs))


def _model_hidden(model, params, inputs):
  """The multitask model's last hidden state (adapters applied)."""
  return np.asarray(_model_fn(model.config, model.pooling)(params, *inputs))


def _flat(tree):
  return traverse_util.flatten_dict(tree)


@pytest.fixture(scope="module")
def pretrained(tiny_bert_dir):
  return hf_io.load_bert(tiny_bert_dir)


_BUILT = {}


def _build(tiny_bert_dir, lora, mode=None):
  key = (lora, mode)
  if key not in _BUILT:
    spec = multitask.ModelSpec(
      path=tiny_bert_dir,
      mode=mode or (lora.kind if lora else "full"),
      lora=lora,
      pooling="mean",
      head_dropout=0.1,
    )
    _BUILT[key] = multitask.build(spec, jax.random.PRNGKey(0))
  return _BUILT[key]


def _adapter(kind: str) -> adapters.LoraConfig:
  """One adapter setup for every test (each build costs a compile): layer 1 only."""
  return adapters.LoraConfig(
    kind=kind, rank=4, alpha=8.0, targets=("query", "value", "intermediate"), layers=(1,)
  )


LORA = _adapter("lora")
ADAPTED = [("attention", "query"), ("attention", "value"), ("intermediate",)]
NOT_ADAPTED = [("attention", "key"), ("attention", "attention_output"), ("output",)]


def _node(tree, path):
  for k in path:
    tree = tree[k]
  return tree


# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------


def _check_base_equals_checkpoint(params, pretrained_params):
  flat = _flat(params["encoder"])
  loaded = _flat(pretrained_params)
  base = {p: v for p, v in flat.items() if "lora" not in p}
  assert set(base) == set(loaded)
  for p, v in loaded.items():
    np.testing.assert_array_equal(np.asarray(base[p]), v, err_msg="/".join(p))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_build_with_adapters_is_pretrained_encoder_at_init(tiny_bert_dir, pretrained, kind):
  config, pre = pretrained
  lora = _adapter(kind)
  model, params = _build(tiny_bert_dir, lora)
  assert set(params) == {"encoder", "heads"}
  _check_base_equals_checkpoint(params, pre)

  enc = params["encoder"]
  for path in ADAPTED:
    node = _node(enc["layer_1"], path)["lora"]
    out = node["b"].shape[1]
    assert node["a"].shape == (32, 4) and node["b"].shape == (4, out)
    assert np.abs(np.asarray(node["a"])).max() > 0
    assert (np.asarray(node["b"]) == 0).all()  # B = 0: the adapter is a no-op at step 0.
    if kind == "dora":
      kernel = _node(pre["layer_1"], path)["kernel"]
      np.testing.assert_allclose(
        np.asarray(node["magnitude"]), np.linalg.norm(kernel, axis=0), rtol=1e-6
      )
    else:
      assert "magnitude" not in node
    assert "lora" not in _node(enc["layer_0"], path)  # Layer 0 is not adapted.
  for path in NOT_ADAPTED:
    assert "lora" not in _node(enc["layer_1"], path)
  n_lora = sum("lora" in p for p in _flat(enc))
  assert n_lora == len(ADAPTED) * (3 if kind == "dora" else 2)

  inputs = _inputs()
  got = _model_hidden(model, params, inputs)
  want = _plain_hidden(config, pre, inputs)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_build_draws_the_new_leaves_as_a_full_initialisation_does(tiny_bert_dir, pretrained, kind):
  """build never draws the random values the checkpoint replaces (XLA drops them), and the
  leaves it does draw (adapters, heads) are, bitwise, those of a full initialisation of
  the model with the same key: the same runs as when every leaf was drawn."""
  _, pre = pretrained
  model, params = _build(tiny_bert_dir, _adapter(kind))
  dummy = jnp.zeros((2, 8), jnp.int32)
  full = jax.jit(lambda r: model.init(r, dummy, dummy + 1, dummy, True)["params"])(
    jax.random.PRNGKey(0)
  )
  loaded = {("encoder", *p) for p in _flat(pre)}
  new = {p: v for p, v in _flat(params).items() if p not in loaded and p[-1] != "magnitude"}
  assert {p[0] for p in new} == {"encoder", "heads"}  # Adapters and heads.
  reference = _flat(full)
  for path, value in new.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[path]), str(path))
  _check_base_equals_checkpoint(params, pre)


def test_model_spec_rejects_inconsistent_values(tiny_bert_dir):
  with pytest.raises(ValueError):
    multitask.ModelSpec(path=tiny_bert_dir, mode="lora", lora=None)
  with pytest.raises(ValueError):
    multitask.ModelSpec(path=tiny_bert_dir, mode="full", lora=LORA)
  with pytest.raises(ValueError):
    multitask.ModelSpec(path=tiny_bert_dir, mode="bitfit")
  with pytest.raises(ValueError, match="float16"):
    multitask.build(
      multitask.ModelSpec(path=tiny_bert_dir, mode="full", dtype="float16"), jax.random.PRNGKey(0)
    )


# --------------------------------------------------------------------------
# trainable_mask / split / merge / is_shared
# --------------------------------------------------------------------------


def _tree():
  """A params-shaped tree: encoder with an adapted and a plain dense, and heads."""
  z = lambda *s: np.zeros(s, np.float32)
  return {
    "encoder": {
      "embeddings": {"word_embeddings": {"embedding": z(10, 4)}},
      "layer_0": {
        "attention": {
          "query": {"kernel": z(4, 4), "bias": z(4), "lora": {"a": z(4, 2), "b": z(2, 4)}},
          "key": {"kernel": z(4, 4), "bias": z(4)},
        }
      },
    },
    "heads": {"sst": {"kernel": z(4, 5), "bias": z(5)}, "quora": {"kernel": z(16, 1)}},
  }


def test_trainable_mask_modes():
  tree = _tree()
  paths = list(_flat(tree))
  full = _flat(multitask.trainable_mask(tree, "full"))
  assert set(full) == set(paths) and all(full.values())
  probe = _flat(multitask.trainable_mask(tree, "probe"))
  assert set(probe) == set(paths)
  assert {p for p, v in probe.items() if v} == {p for p in paths if p[0] == "heads"}
  for kind in ("lora", "rslora", "dora"):
    mask = _flat(multitask.trainable_mask(tree, kind))
    want = {p for p in paths if p[0] == "heads" or "lora" in p}
    assert {p for p, v in mask.items() if v} == want, kind
    assert all(isinstance(v, bool) for v in mask.values())


def test_trainable_mask_on_built_lora_params(tiny_bert_dir):
  _, params = _build(tiny_bert_dir, LORA)
  mask = _flat(multitask.trainable_mask(params, "lora"))
  assert set(mask) == set(_flat(params))
  true = [p for p, v in mask.items() if v]
  assert true and all(p[0] == "heads" or "lora" in p for p in true)
  assert any(p[0] == "heads" for p in true) and any("lora" in p for p in true)
  # Every head and every adapter leaf trains; kernels/embeddings/norms do not.
  assert all(v for p, v in mask.items() if p[0] == "heads" or "lora" in p)


@pytest.mark.parametrize("mode", ["full", "probe", "lora"])
def test_split_merge_round_trip(mode, tiny_bert_dir):
  _, params = _build(tiny_bert_dir, LORA)
  mask = multitask.trainable_mask(params, mode)
  trainable, frozen = multitask.split(params, mask)
  ft, ff = _flat(trainable), _flat(frozen)
  fm = _flat(mask)
  assert set(ft) == {p for p, v in fm.items() if v}
  assert set(ff) == {p for p, v in fm.items() if not v}
  merged = multitask.merge(trainable, frozen)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
  for p, v in _flat(params).items():
    assert _flat(merged)[p] is v or np.array_equal(np.asarray(_flat(merged)[p]), np.asarray(v))
  assert multitask.count(trainable) + multitask.count(frozen) == multitask.count(params)
  if mode == "lora":
    assert 0 < multitask.count(trainable) < multitask.count(frozen)


def test_is_shared_marks_encoder_not_heads(tiny_bert_dir):
  _, params = _build(tiny_bert_dir, LORA)
  trainable, _ = multitask.split(params, multitask.trainable_mask(params, "lora"))
  shared = multitask.is_shared(trainable)
  assert jax.tree_util.tree_structure(shared) == jax.tree_util.tree_structure(trainable)
  flat = _flat(shared)
  assert any(flat.values()) and not all(flat.values())
  for p, v in flat.items():
    assert v == (p[0] != "heads"), p


# --------------------------------------------------------------------------
# adapters.merge_all
# --------------------------------------------------------------------------


def _perturb_adapters(params, seed):
  """A trained-looking tree: random nonzero B (and DoRA magnitudes off the column norm)."""
  rng = np.random.default_rng(seed)
  flat = {p: np.asarray(v) for p, v in _flat(params).items()}
  for p in sorted(flat):
    if "lora" in p and p[-1] == "b":
      flat[p] = (0.3 * rng.normal(size=flat[p].shape)).astype(np.float32)
    elif "lora" in p and p[-1] == "magnitude":
      flat[p] = (flat[p] * rng.uniform(0.5, 1.5, size=flat[p].shape)).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora"])
def test_merge_all_matches_unmerged_encoder(tiny_bert_dir, pretrained, kind):
  config, pre = pretrained
  lora = _adapter(kind)
  # rsLoRA has LoRA's parameters (only the scale differs): reuse the LoRA build.
  model, params = _build(tiny_bert_dir, _adapter("dora" if kind == "dora" else "lora"))
  model = multitask.MultitaskModel(dataclasses.replace(model.config, lora=lora), model.pooling)
  params = _perturb_adapters(params, seed=4)
  inputs = _inputs(seed=2)
  unmerged = _model_hidden(model, params, inputs)
  # The perturbation must actually change the encoder, or the comparison proves nothing.
  assert np.abs(unmerged - _plain_hidden(config, pre, inputs)).max() > 1e-2

  merged = adapters.merge_all(params["encoder"], lora)
  assert set(_flat(merged)) == {p for p in _flat(params["encoder"]) if "lora" not in p}
  # Layer 0 had no adapters: untouched. Layer 1's adapted kernels changed.
  for path in ADAPTED:
    np.testing.assert_array_equal(
      np.asarray(_node(merged["layer_0"], path)["kernel"]), _node(pre["layer_0"], path)["kernel"]
    )
    assert not np.allclose(
      np.asarray(_node(merged["layer_1"], path)["kernel"]), _node(pre["layer_1"], path)["kernel"]
    )
  got = _plain_hidden(config, merged, inputs)
  np.testing.assert_allclose(got, unmerged, atol=1e-5, rtol=0)


def test_merge_all_none_is_identity():
  tree = _tree()
  assert adapters.merge_all(tree, None) is tree
