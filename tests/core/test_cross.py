"""Cross-encoded pairs (config.heads.pairs="cross"): one [CLS] s1 [SEP] s2 [SEP] sequence
per pair with token types, its batch layout, the heads on one pooled vector per pair, the
loss, the refusal of bi-encoder-only heads, and one tiny end-to-end run with its export."""

from __future__ import annotations

import itertools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import needs_data, read_metrics, tiny_config
from safetensors.numpy import load_file

from mtl_jax import step
from mtl_jax.config import defaults as default
from mtl_jax.config import resume, run_spec, upgrade
from mtl_jax.data import batching
from mtl_jax.data.batching import Encoded
from mtl_jax.data.files import TaskSplit
from mtl_jax.models import heads, hf_io, multitask
from mtl_jax.tasks import TASKS

CROSS = heads.HeadSpec(sts="features", pairs="cross")
H = 8
S = 6


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
  return hf_io.load_tokenizer(tiny_bert_dir)


def _split(task, first, second, split="dev"):
  ids = [f"id{i}" for i in range(len(first))]
  return TaskSplit(
    task, split, "x.csv", ids, first, second, np.linspace(0, 5, len(first)).astype(np.float32), []
  )


# -------------------------------------------------------------------------------------
# Tokenization
# -------------------------------------------------------------------------------------


def test_a_pair_is_one_sequence_with_token_types(tokenizer):
  enc = batching.encode(tokenizer, _split("sts", ["a cat"], ["the dog sat ."]), 16, cross=True)
  assert enc.is_cross_pair and not enc.is_bi_pair and enc.second is None and len(enc) == 1
  cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
  a = tokenizer("a cat", add_special_tokens=False)["input_ids"]
  b = tokenizer("the dog sat .", add_special_tokens=False)["input_ids"]
  assert len(a) == 2 and len(b) == 4
  np.testing.assert_array_equal(enc.first[0], [cls, *a, sep, *b, sep])
  # 0 on [CLS] s1 [SEP], 1 on s2 [SEP].
  np.testing.assert_array_equal(enc.token_types[0], [0, 0, 0, 0, 1, 1, 1, 1, 1])
  assert enc.first[0].dtype == enc.token_types[0].dtype == np.int32
  assert list(enc.lengths) == [9]
  # Single-sentence tasks are unaffected by cross.
  sst = batching.encode(tokenizer, _split("sst", ["a cat"], None), 16, cross=True)
  assert not sst.is_cross_pair and not sst.is_bi_pair and list(sst.first[0]) == [cls, *a, sep]


def test_long_pairs_are_truncated_fairly_to_max_length(tokenizer):
  long = "the cat sat on the mat and the dog sat on the mat"
  first, second = [long, long, "a cat"], ["a dog", long, "a dog"]
  enc = batching.encode(tokenizer, _split("quora", first, second), 10, cross=True)
  sep = tokenizer.sep_token_id
  for ids, types in zip(enc.first, enc.token_types):
    n1 = int((types == 0).sum())
    assert (types[:n1] == 0).all() and (types[n1:] == 1).all()
    assert ids[n1 - 1] == sep and ids[-1] == sep and (ids == sep).sum() == 2
  assert [len(x) for x in enc.first] == [10, 10, 7]
  # A long s1 with a short s2: s1 is trimmed, s2 is kept whole ("longest_first").
  assert list(enc.first[0][-3:]) == list(tokenizer("a dog")["input_ids"][1:])
  # Both long: both keep a share of the tokens.
  n1 = int((enc.token_types[1] == 0).sum())
  assert min(n1 - 2, 10 - n1 - 1) >= 3
  # The same encoding as the tokenizer's pair encoding (which mtl_jax.embed uses).
  want = tokenizer(first, second, truncation=True, max_length=10)
  for got_ids, got_types, ids, types in zip(
    enc.first, enc.token_types, want["input_ids"], want["token_type_ids"]
  ):
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_types, types)


def test_an_encoded_split_is_bi_or_cross_not_both():
  seq = [np.array([2, 5, 3], np.int32)]
  with pytest.raises(ValueError, match="either"):
    Encoded("sts", "dev", ["a"], seq, seq, None, seq)


# -------------------------------------------------------------------------------------
# Batches
# -------------------------------------------------------------------------------------


def _cross_data(task: str, n: int, seed: int = 0, max_len: int = 30) -> Encoded:
  """Synthetic cross pairs: ids unique to (example, position), types 0 then 1."""
  rng = np.random.default_rng(seed)
  first, types = [], []
  for i in range(n):
    n1, n2 = int(rng.integers(2, max_len // 2)), int(rng.integers(2, max_len // 2))
    first.append(np.arange(n1 + n2, dtype=np.int32) + 1000 * (i + 1))
    types.append(np.array([0] * n1 + [1] * n2, np.int32))
  labels = rng.uniform(0, 5, n).astype(np.float32)
  return Encoded(task, "train", [f"id{i}" for i in range(n)], first, None, labels, types)


@pytest.mark.parametrize("task", ["quora", "sts"])
def test_make_batch_holds_one_pair_per_row_with_token_types(task):
  data = _cross_data(task, 10)
  assert batching.examples_per_batch(data, 8) == 8
  idx = np.array([7, 2, 5, 0, 9])
  length = 16
  b = batching.make_batch(data, idx, 8, length)
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    assert b[k].shape == (8, length) and b[k].dtype == np.int32, k
  for row, i in enumerate(idx):
    n = min(len(data.first[i]), length)
    np.testing.assert_array_equal(b["input_ids"][row, :n], data.first[i][:n])
    np.testing.assert_array_equal(b["token_type_ids"][row, :n], data.token_types[i][:n])
    assert (b["token_type_ids"][row, n:] == 0).all() and b["attention_mask"][row].sum() == n
    assert b["labels"][row] == data.labels[i] and b["weights"][row] == 1.0
  for row in (5, 6, 7):  # Padding rows.
    assert not b["input_ids"][row].any() and not b["token_type_ids"][row].any()
    assert b["weights"][row] == 0
  assert b["token_type_ids"].any()
  with pytest.raises(ValueError, match="do not fit"):
    batching.make_batch(data, np.arange(9), 8, length)


def test_train_and_eval_batches_stack_single_sentences_and_cross_pairs():
  sst = Encoded(
    "sst",
    "train",
    ["s0", "s1", "s2", "s3"],
    [np.array([2, 9, 3], np.int32)] * 4,
    None,
    np.zeros(4, np.float32),
  )
  datasets = [sst, _cross_data("quora", 12, seed=1), _cross_data("sts", 9, seed=2)]
  for step_ in range(3):
    b = batching.train_batch(datasets, step_, 4, 0, (8, 16, 32))
    assert b["input_ids"].shape[:2] == (3, 4)
    assert b["weights"].sum(-1).tolist() == [4, 4, 4]  # Every row holds an example.
    assert not b["token_type_ids"][0].any() and b["token_type_ids"][1:].any()
    longest = max(int(b["attention_mask"][t].sum(-1).max()) for t in range(3))
    assert b["input_ids"].shape[-1] == batching.bucket_length(longest, (8, 16, 32))
  data = datasets[2]
  seen = np.concatenate([idx for idx, batch in batching.eval_batches(data, 4, (8, 16, 32))])
  assert sorted(seen.tolist()) == list(range(len(data)))


# -------------------------------------------------------------------------------------
# Heads and loss
# -------------------------------------------------------------------------------------


def _cross_heads(kind="linear", pooling="mean"):
  spec = heads.HeadSpec(kind=kind, sts="features", pairs="cross")
  module = heads.TaskHeads(0.1, spec, pooling, H)
  pooled = jax.random.normal(jax.random.PRNGKey(3), (S, 2 * H if pooling == "concat" else H))
  return module, module.init(jax.random.PRNGKey(4), pooled)["params"], pooled


@pytest.mark.parametrize("kind, pooling", list(itertools.product(heads.KINDS, heads.ALL_POOLINGS)))
def test_cross_heads_give_one_output_per_row(kind, pooling):
  module, params, pooled = _cross_heads(kind, pooling)
  out = module.apply(
    {"params": params}, pooled, deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)}
  )
  assert set(out) == {"sst", "quora", "sts"}
  assert out["sst"].shape == (S, 5) and out["quora"].shape == (S,) and out["sts"].shape == (S,)
  sts = np.asarray(out["sts"])
  assert np.isfinite(sts).all() and (sts > 0).all() and (sts < 5).all()
  width = {"linear": pooled.shape[-1], "shared": H, "multi_stream": 2 * H}[kind]
  assert params["quora"]["kernel"].shape == params["sts"]["kernel"].shape == (width, 1)


def test_cross_heads_closed_form_and_rows_are_independent():
  module, params, pooled = _cross_heads()
  out = module.apply({"params": params}, pooled)
  p = np.asarray(pooled)
  q, s = params["quora"], params["sts"]
  np.testing.assert_allclose(
    np.asarray(out["quora"]), (p @ q["kernel"] + q["bias"])[:, 0], rtol=1e-5, atol=1e-5
  )
  want = 5 / (1 + np.exp(-(p @ s["kernel"] + s["bias"])[:, 0]))
  np.testing.assert_allclose(np.asarray(out["sts"]), want, rtol=1e-5, atol=1e-5)
  changed = module.apply({"params": params}, pooled.at[4].set(7.0))
  for k in ("quora", "sts"):
    keep = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(np.asarray(changed[k])[keep], np.asarray(out[k])[keep], rtol=1e-6)
    assert not np.allclose(np.asarray(changed[k])[4], np.asarray(out[k])[4])


def test_cross_loss_uses_every_row():
  module, params, pooled = _cross_heads()
  out = module.apply({"params": params}, pooled)
  labels = jnp.asarray([4.2, 0.5, 2.0, 1.0, 0.0, 0.0])
  weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # Rows 4, 5 are padding.
  sts, quora = np.asarray(out["sts"]), np.asarray(out["quora"])
  got = float(step.task_loss(out, labels, weights, jnp.asarray(TASKS.index("sts"))))
  assert got == pytest.approx(float(((sts[:4] - labels[:4]) ** 2).mean()), rel=1e-5)
  y = np.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
  got = float(step.task_loss(out, jnp.asarray(y), weights, jnp.asarray(TASKS.index("quora"))))
  bce = np.logaddexp(0, quora) - y * quora
  assert got == pytest.approx(float(bce[:4].mean()), rel=1e-5)


@pytest.mark.parametrize("pooling", heads.ALL_POOLINGS)
def test_pair_outputs_ignore_padding_and_read_token_types(tiny_bert_dir, tokenizer, pooling):
  config, encoder = hf_io.load_bert(tiny_bert_dir)
  model = multitask.MultitaskModel(config, pooling, 0.1, CROSS)
  enc = batching.encode(
    tokenizer,
    _split("sts", ["a cat", "what is this movie ?"], ["the dog sat .", "a good movie"]),
    16,
    cross=True,
  )
  short = batching.make_batch(enc, np.arange(2), 4, 16)
  params = model.init(
    jax.random.PRNGKey(0), short["input_ids"], short["attention_mask"], short["token_type_ids"]
  )["params"]
  params = dict(params, encoder=encoder)

  def outputs(batch):
    out = model.apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    return {k: np.asarray(out[k])[:2] for k in ("quora", "sts")}

  want = outputs(short)
  long = batching.make_batch(enc, np.arange(2), 4, 32)
  long["input_ids"] = np.where(long["attention_mask"] == 1, long["input_ids"], 57)  # Junk.
  long["token_type_ids"] = np.where(long["attention_mask"] == 1, long["token_type_ids"], 1)
  for k, v in outputs(long).items():
    np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-5)
  untyped = dict(short, token_type_ids=np.zeros_like(short["token_type_ids"]))
  assert not np.allclose(outputs(untyped)["sts"], want["sts"], atol=1e-6)


# -------------------------------------------------------------------------------------
# Config: refusal of bi-encoder-only heads, resume
# -------------------------------------------------------------------------------------


def _config(**heads_values):
  config = default.get_config()
  config.model = ml_collections.ConfigDict(  # A str path (the bundled one is a PosixPath).
    dict(config.model.to_dict(), path=str(config.model.path or "/some/bert"))
  )
  config.heads.update(heads_values)
  return config


REFUSED = [(name, value) for name, values in heads.BI_ENCODER_ONLY.items() for value in values]


@pytest.mark.parametrize("name, value", REFUSED, ids=[f"{n}={v}" for n, v in REFUSED])
def test_bi_encoder_only_heads_are_refused_with_cross_pairs(name, value):
  config = _config(pairs="cross", **{"quora": "features", "sts": "features", name: value})
  with pytest.raises(
    run_spec.ConfigError, match=rf"config\.heads\.{name}: '{value}'.*heads\.pairs='cross'"
  ):
    run_spec.build(config)
  config.heads.pairs = "bi"  # The same heads are fine on bi-encoded pairs.
  run_spec.build(config)


def test_cross_pairs_config_errors_say_what_to_set():
  with pytest.raises(run_spec.ConfigError, match=re.escape("config.heads.sts: 'cosine'")) as e:
    run_spec.build(_config(pairs="cross"))  # The default STS head is a cosine.
  assert "heads.sts='features'" in str(e.value)
  with pytest.raises(run_spec.ConfigError, match=re.escape("config.heads.pairs: 'tri'")):
    run_spec.build(_config(pairs="tri"))
  config = _config(pairs="cross", sts="features")
  run_spec.build(config)
  assert run_spec.model_spec(config).heads == CROSS


def test_resume_treats_a_missing_heads_pairs_as_bi():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["heads"]["pairs"]
  assert resume.resume_mismatches(saved, default.get_config()) == []
  new = default.get_config()
  new.heads.update({"pairs": "cross", "sts": "features"})
  assert resume.resume_mismatches(saved, new) == [
    ("heads.pairs", "bi", "cross"),
    ("heads.sts", "cosine", "features"),
  ]
  old = upgrade.upgrade({k: v for k, v in saved.items() if k != "heads"})
  assert run_spec.head_spec(old) == heads.HeadSpec()


# -------------------------------------------------------------------------------------
# End to end
# -------------------------------------------------------------------------------------


@needs_data
def test_tiny_cross_encoder_run_trains_predicts_and_exports(tiny_bert_dir, tokenizer, tmp_path):
  from mtl_jax import train
  from mtl_jax.tools import export

  config = tiny_config(tiny_bert_dir)
  config.heads.pairs = "cross"
  config.heads.sts = "features"
  data = train.load_data(run_spec.build(config), tokenizer)
  assert [d.is_cross_pair for d in data["train"]] == [False, True, True]
  assert all(d.is_cross_pair for d in data["dev"] + data["test"] if d.task != "sst")
  batch = batching.train_batch(data["train"], 0, 8, 0, (16, 32), 32)
  assert batch["weights"].sum(-1).tolist() == [8, 8, 8]  # 8 pairs per pair task.
  assert not batch["token_type_ids"][0].any() and batch["token_type_ids"][1:].any(-1).all()

  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert all(np.isfinite(v) for v in results.values())
  assert 0 <= results["sst/accuracy"] <= 1 and 0 <= results["quora/accuracy"] <= 1
  assert -1 <= results["sts/pearson"] <= 1
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r[f"task_loss/{t}"]) for r in rows for t in TASKS)
  for split in ("dev", "test"):  # Cross-encoded predictions for every example.
    with open(os.path.join(workdir, "predictions", f"sts-{split}-output.csv")) as f:
      lines = f.read().splitlines()[1:]
    assert len(lines) == len(next(d for d in data[split] if d.task == "sts"))
    assert all(0 < float(line.split(" , ")[1]) < 5 for line in lines)

  out = str(tmp_path / "export")
  info = export.export(workdir, out)
  assert info["heads_config"]["pairs"] == "cross"
  tensors = load_file(os.path.join(out, "heads.safetensors"))
  assert tensors["quora/kernel"].shape == tensors["sts/kernel"].shape == (32, 1)
