"""Pair encoding per task (config.heads.pairs="quora=cross", "sts=cross", ...): parsing and
refusals naming the key, the heads on each task's own layout, the data encoded per task,
and tiny runs with mixed encodings, packed and not, their evaluation, predict and export."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest
from conftest import DATA_DIR, default_config_with, needs_data, read_metrics, tiny_config

from mtl_jax import prediction_files, tasks, train
from mtl_jax.config import defaults as default
from mtl_jax.config import resume, run_spec
from mtl_jax.data import batching
from mtl_jax.models import heads

H, S = 8, 6


# -------------------------------------------------------------------------------------
# The value of heads.pairs
# -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "value, want",
  [
    ("bi", ("bi", "bi")),
    ("cross", ("cross", "cross")),
    ("quora=cross", ("cross", "bi")),
    ("sts=cross", ("bi", "cross")),
    ("quora=cross,sts=bi", ("cross", "bi")),
    (" sts = cross , quora = bi ", ("bi", "cross")),
    ("quora=cross,sts=cross", ("cross", "cross")),
  ],
)
def test_pairs_parse_per_task(value, want):
  assert heads.parse_pairs(value) == dict(zip(("quora", "sts"), want))
  spec = heads.HeadSpec(quora="features", sts="features", pairs=value)
  assert tuple(spec.cross(t) for t in ("quora", "sts")) == tuple(w == "cross" for w in want)
  assert not spec.cross("sst")


BAD_PAIRS = [
  ("tri", "is not task=encoding"),
  ("quora=tri", "'tri' (for quora) is not one of"),
  ("sst=cross", "'sst' is not a pair task"),
  ("para=cross", "'para' is not a pair task"),
  ("quora=cross,quora=bi", "quora is given twice"),
  ("quora=cross,", "'' is not task=encoding"),
  ("", "'' is not task=encoding"),
]


@pytest.mark.parametrize("value, why", BAD_PAIRS, ids=[v or "empty" for v, _ in BAD_PAIRS])
def test_bad_pairs_values_are_refused_naming_the_key(value, why):
  config = default_config_with(**{"heads.pairs": value})
  with pytest.raises(run_spec.ConfigError) as e:
    run_spec.build(config)
  message = str(e.value)
  assert message.startswith(f"config.heads.pairs: {value!r}: ") and why in message, message
  assert "'quora=cross,sts=bi'" in message  # Says what a good value looks like.


REFUSED = [  # (pairs, the head key, its value): a comparing head on a cross-encoded task.
  ("sts=cross", "sts", "cosine"),
  ("sts=cross", "sts", "dot"),
  ("sts=cross", "sts_loss", "cosine"),
  ("quora=cross", "quora", "dot"),
  ("quora=cross", "quora", "cosine"),
]


@pytest.mark.parametrize("pairs, key, value", REFUSED)
def test_a_comparing_head_is_refused_on_its_cross_encoded_task_only(pairs, key, value):
  task = pairs.split("=")[0]
  other = "quora" if task == "sts" else "sts"
  values = {"heads.quora": "features", "heads.sts": "features", f"heads.{key}": value}
  config = default_config_with(**{**values, "heads.pairs": pairs})
  with pytest.raises(run_spec.ConfigError) as e:
    run_spec.build(config)
  message = str(e.value)
  assert message.startswith(f"config.heads.{key}: {value!r} compares"), message
  assert f"encodes each {task} pair as one" in message and "or heads.pairs='bi'" in message
  # The same head is fine when only the other task is cross-encoded.
  config.heads.pairs = f"{other}=cross"
  run_spec.build(config)
  # With both cross-encoded, the value suggested keeps the other one cross.
  config.heads.pairs = "quora=cross,sts=cross"
  with pytest.raises(run_spec.ConfigError, match=re.escape(f"or heads.pairs='{other}=cross'")):
    run_spec.build(config)


def test_format_pairs_is_the_shortest_value_that_parses_back():
  for value in ("bi", "cross", "quora=cross", "sts=cross", "quora=bi,sts=bi", "sts=bi"):
    encodings = heads.parse_pairs(value)
    assert heads.parse_pairs(heads.format_pairs(encodings)) == encodings
  assert heads.format_pairs({"quora": "cross", "sts": "bi"}) == "quora=cross"
  assert heads.format_pairs({"quora": "bi", "sts": "bi"}) == "bi"


def test_the_default_sts_head_with_sts_cross_encoded_says_what_to_set():
  config = default_config_with(**{"heads.pairs": "sts=cross"})
  with pytest.raises(run_spec.ConfigError, match=re.escape("config.heads.sts: 'cosine'")) as e:
    run_spec.build(config)
  assert "use heads.sts='features'" in str(e.value)
  # Quora cross-encoded keeps the default (bi-encoded, cosine) STS head.
  spec = run_spec.build(default_config_with(**{"heads.pairs": "quora=cross"}))
  assert [spec.cross_encoded(t) for t in tasks.TASKS] == [False, True, False]


def test_resume_compares_pairs_as_written():
  saved = json.loads(default.get_config().to_json_best_effort())
  new = default.get_config()
  new.heads.pairs = "quora=cross"
  assert resume.resume_mismatches(saved, new) == [("heads.pairs", "bi", "quora=cross")]


# -------------------------------------------------------------------------------------
# Heads: each task reads its own layout
# -------------------------------------------------------------------------------------


def _outputs(spec: heads.HeadSpec, seed: int = 0):
  pooled = jax.random.normal(jax.random.PRNGKey(seed), (S, H))
  module = heads.TaskHeads(0.1, spec)
  params = module.init(jax.random.PRNGKey(1), pooled)["params"]
  return module.apply({"params": params}, pooled), params, np.asarray(pooled)


def test_quora_cross_sts_bi_heads():
  out, params, p = _outputs(heads.HeadSpec(pairs="quora=cross"))
  q = params["quora"]
  assert q["kernel"].shape == (H, 1)  # On one pooled vector, not [u; v; |u-v|; u*v].
  np.testing.assert_allclose(
    np.asarray(out["quora"]), (p @ q["kernel"] + q["bias"])[:, 0], rtol=1e-5, atol=1e-5
  )
  u, v = p[: S // 2], p[S // 2 :]
  cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
  np.testing.assert_allclose(np.asarray(out["sts"]), 5 * cos, rtol=1e-5, atol=1e-5)
  assert out["quora"].shape == (S,) and out["sts"].shape == (S // 2,)


def test_sts_cross_quora_bi_heads():
  out, params, p = _outputs(heads.HeadSpec(sts="features", pairs="sts=cross"))
  assert params["quora"]["kernel"].shape == (4 * H, 1) and params["sts"]["kernel"].shape == (H, 1)
  s = params["sts"]
  want = 5 / (1 + np.exp(-(p @ s["kernel"] + s["bias"])[:, 0]))
  np.testing.assert_allclose(np.asarray(out["sts"]), want, rtol=1e-5, atol=1e-5)
  u, v = p[: S // 2], p[S // 2 :]
  q = params["quora"]
  feats = np.concatenate([u, v, np.abs(u - v), u * v], -1)
  np.testing.assert_allclose(
    np.asarray(out["quora"]), (feats @ q["kernel"] + q["bias"])[:, 0], rtol=1e-5, atol=1e-5
  )
  assert out["quora"].shape == (S // 2,) and out["sts"].shape == (S,)


def test_both_named_cross_is_cross():
  a, _, _ = _outputs(heads.HeadSpec(sts="features", pairs="cross"))
  b, _, _ = _outputs(heads.HeadSpec(sts="features", pairs="quora=cross,sts=cross"))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


# -------------------------------------------------------------------------------------
# Data, tiny runs, evaluation, predict, export
# -------------------------------------------------------------------------------------


@needs_data
def test_data_is_encoded_per_task(tiny_bert_dir):
  config = tiny_config(tiny_bert_dir)
  config.heads.pairs = "quora=cross"
  spec = run_spec.build(config)
  data = train.load_data(spec, spec.tokenizer())
  for split, encoded in data.items():
    for d in encoded:
      assert d.is_cross_pair == (d.task == "quora"), (split, d.task)
      assert d.is_bi_pair == (d.task == "sts"), (split, d.task)
  batch = batching.train_batch(data["train"], 0, 8, 0, (16, 32))
  assert batch["weights"].sum(-1).tolist() == [8, 8, 4]  # 8 sentences, 8 + 4 pairs.
  assert batch["token_type_ids"][1].any() and not batch["token_type_ids"][[0, 2]].any()


MIXED_RUNS = [("quora=cross", True), ("sts=cross", False)]


@pytest.fixture(scope="module", params=MIXED_RUNS, ids=[f"{p}-packed={k}" for p, k in MIXED_RUNS])
def mixed_run(request, tiny_bert_dir, tmp_path_factory):
  pairs, packed = request.param
  config = tiny_config(tiny_bert_dir, steps=2, packing=packed, checkpoint_every=2)
  config.heads.pairs = pairs
  if pairs == "sts=cross":
    config.heads.sts = "features"
  workdir = str(tmp_path_factory.mktemp("mixed"))
  results = train.train_and_evaluate(config, workdir)
  return pairs, workdir, results


@needs_data
def test_a_tiny_mixed_run_trains_and_evaluates(mixed_run):
  _, workdir, results = mixed_run
  assert set(results) >= {"sst/accuracy", "quora/accuracy", "sts/pearson", "overall"}
  assert all(np.isfinite(v) for v in results.values())
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r[f"task_loss/{t}"]) for r in rows for t in tasks.TASKS)


@needs_data
@pytest.mark.parametrize("task", ["quora", "sts"])
def test_predict_encodes_each_task_as_the_run_trained(mixed_run, tmp_path, task):
  from mtl_jax.tools import predict

  _, workdir, _ = mixed_run
  src = os.path.join(DATA_DIR, tasks.get(task).files["dev"])
  with open(src, encoding="utf-8") as f:
    head = f.readlines()[:41]  # The header and the 40 rows the run evaluated.
  path = tmp_path / "in.csv"
  path.write_text("".join(head), encoding="utf-8")
  out = str(tmp_path / "out.csv")
  predict.predict_file(workdir, task, str(path), out)
  _, ids, values = prediction_files.read_predictions(out)
  run_file = os.path.join(workdir, "predictions", prediction_files.output_filename(task, "dev"))
  _, run_ids, run_values = prediction_files.read_predictions(run_file)
  assert ids == run_ids
  np.testing.assert_allclose(values, run_values, rtol=1e-5, atol=1e-6)


@needs_data
def test_export_records_each_tasks_encoding(mixed_run, tmp_path):
  from mtl_jax.tools import export

  pairs, workdir, _ = mixed_run
  info = export.export(workdir, str(tmp_path / "export"))
  assert info["heads_config"]["pairs"] == pairs
  cross = pairs.split("=")[0]
  assert info["pairs"] == {t: "cross" if t == cross else "bi" for t in ("quora", "sts")}
