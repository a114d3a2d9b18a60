"""mtl_jax.export: a 2-step LoRA / DoRA run on the tiny BERT, exported and read back.

The merged export, read by `hf_io.load_bert` and run through a plain `BertEncoder`, must
give the unmerged fine-tuned model's hidden states; the heads must round-trip exactly.
(The same export read by PyTorch's `BertModel` is checked by
scripts/check_export_with_torch.py, outside the tests: torch is not a dependency.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import needs_data, shard_checkpoint, tiny_config
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file

from mtl_jax import train
from mtl_jax.models import hf_io
from mtl_jax.models.bert import BertEncoder
from mtl_jax.tools import cli, export

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENTENCES = [
  "The cat sat on the mat.",
  "a dog",
  "what is this movie ?",
  "very very good",
  "it was not bad and the dog was good",
  "dogs",
]


@pytest.fixture(scope="module", params=["lora", "dora"])
def run(request, tiny_bert_dir, tmp_path_factory):
  """A 2-step run with adapters on query and value: (kind, workdir)."""
  kind = request.param
  config = tiny_config(tiny_bert_dir, steps=2, learning_rate=1e-2)
  config.adapter.kind = kind
  config.adapter.targets = ("query", "value")
  config.eval.write_predictions = False
  workdir = str(tmp_path_factory.mktemp(f"run_{kind}"))
  train.train_and_evaluate(config, workdir)
  return kind, workdir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """(kind, workdir, export dir, mtl_jax.json info) of the run's export."""
  kind, workdir = run
  out = str(tmp_path_factory.mktemp(f"export_{kind}") / "hf")
  info = export.export(workdir, out)
  return kind, workdir, out, info


def _inputs(model_dir: str) -> dict[str, np.ndarray]:
  tokenizer = hf_io.load_tokenizer(model_dir)
  enc = tokenizer(SENTENCES, padding="longest", return_tensors="np")
  return {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}


@needs_data
def test_merged_export_matches_the_unmerged_model(exported, tiny_bert_dir):
  kind, workdir, out, info = exported
  assert sorted(os.listdir(out)) == sorted(
    ["config.json", "model.safetensors", "vocab.txt", "heads.safetensors", "mtl_jax.json"]
  )
  assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f or ".old-" in f]
  config, model, params = train.load_trained(workdir)
  assert model.config.lora is not None and model.config.lora.kind == kind
  assert info["encoder"]["merged"] and info["encoder"]["lora"]["kind"] == kind

  hf_config, merged = hf_io.load_bert(out)
  assert hf_config.lora is None and hf_config.num_layers == model.config.num_layers
  # The adapters have trained, so the merge changed the adapted kernels (only those).
  _, pretrained = hf_io.load_bert(tiny_bert_dir)
  for i in range(hf_config.num_layers):
    for name in ("query", "value"):
      got, base = (
        merged[f"layer_{i}"]["attention"][name],
        pretrained[f"layer_{i}"]["attention"][name],
      )
      assert np.abs(got["kernel"] - base["kernel"]).max() > 1e-4, (i, name)
      np.testing.assert_array_equal(got["bias"], base["bias"])
    np.testing.assert_array_equal(
      merged[f"layer_{i}"]["attention"]["key"]["kernel"],
      pretrained[f"layer_{i}"]["attention"]["key"]["kernel"],
    )
  flat_merged = traverse_util.flatten_dict(merged)
  assert set(flat_merged) == set(traverse_util.flatten_dict(pretrained))

  x = _inputs(out)  # The exported tokenizer files.
  args = (x["input_ids"], x["attention_mask"], x["token_type_ids"])
  unmerged, _ = model.apply({"params": params}, *args, method=model.embed)
  plain = BertEncoder(hf_config).apply({"params": merged}, *args)
  before = BertEncoder(hf_config).apply({"params": pretrained}, *args)
  real = x["attention_mask"].astype(bool)
  unmerged, plain, before = (np.asarray(a)[real] for a in (unmerged, plain, before))
  np.testing.assert_allclose(plain, unmerged, atol=1e-5, rtol=0)
  assert np.abs(before - unmerged).max() > 1e-4  # Fine-tuning changed the encoder.


@needs_data
def test_heads_and_metadata_round_trip(exported):
  kind, workdir, out, _ = exported
  _, model, params = train.load_trained(workdir)
  heads = load_file(os.path.join(out, "heads.safetensors"))
  want = traverse_util.flatten_dict(jax.device_get(params["heads"]), sep="/")
  assert set(heads) == set(want) == {"sst/kernel", "sst/bias", "quora/kernel", "quora/bias"}
  for k, v in want.items():
    np.testing.assert_array_equal(heads[k], np.asarray(v), err_msg=k)
  hidden = model.config.hidden_size
  assert heads["sst/kernel"].shape == (hidden, 5) and heads["quora/kernel"].shape == (4 * hidden, 1)
  # Every file as readable as the umask allows (safetensors alone writes 0600).
  umask = os.umask(0)
  os.umask(umask)
  for name in os.listdir(out):
    assert os.stat(os.path.join(out, name)).st_mode & 0o777 == 0o666 & ~umask, name

  with open(os.path.join(out, "mtl_jax.json")) as f:
    info = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    assert info["config"] == json.load(f)
  assert info["pooling"] == model.pooling == "mean"
  assert info["source"]["step"] == 2 and info["source"]["workdir"] == os.path.abspath(workdir)
  assert set(info["heads"]) == {"sst", "quora", "sts"}
  assert info["heads"]["sst"]["params"] == {"sst/kernel": [hidden, 5], "sst/bias": [5]}
  assert info["heads"]["sts"]["params"] == {}
  assert info["tokenizer_files"] == ["vocab.txt"]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["model_type"] == "bert"
  # The pretrained pooler is carried over, so PyTorch's BertModel finds every weight.
  tensors = load_file(os.path.join(out, "model.safetensors"))
  assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(tensors)
  assert tensors["encoder.layer.0.attention.self.query.weight"].shape == (hidden, hidden)


@needs_data
@pytest.mark.parametrize("run", ["lora"], indirect=True)  # Once is enough.
def test_existing_output_needs_overwrite(run, tmp_path):
  _, workdir = run
  out = tmp_path / "hf"
  out.mkdir()
  export.export(workdir, str(out))  # An existing empty directory is fine.
  with pytest.raises(export.ExportError, match="--overwrite"):
    export.export(workdir, str(out))
  (out / "stale.txt").write_text("old")
  export.export(workdir, str(out), overwrite=True)
  assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # No .tmp-/.old- directories left behind.
  # --overwrite replaces only an earlier export, never the run itself or another directory.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(export.ExportError, match="not an earlier export"):
    export.export(workdir, str(other), overwrite=True)
  with pytest.raises(export.ExportError, match="is or contains"):
    export.export(workdir, workdir, overwrite=True)
  with pytest.raises(export.ExportError, match="is or contains"):
    export.export(workdir, os.path.dirname(workdir), overwrite=True)
  assert os.listdir(other) == ["notes.txt"] and os.path.isfile(os.path.join(workdir, "config.json"))


@needs_data
@pytest.mark.parametrize("run", ["lora"], indirect=True)  # Once is enough.
def test_workdir_without_a_checkpoint(run, tmp_path):
  _, workdir = run
  empty = tmp_path / "empty_run"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(export.ExportError, match="has not saved a checkpoint"):
    export.export(str(empty), str(tmp_path / "o"))
  (empty / "checkpoints").mkdir()
  with pytest.raises(export.ExportError, match="no checkpoint in"):
    export.export(str(empty), str(tmp_path / "o"))
  assert sorted(os.listdir(tmp_path)) == ["empty_run"]


@needs_data
@pytest.mark.parametrize("run", ["lora"], indirect=True)  # Once is enough.
@pytest.mark.parametrize("where", ["safetensors", "copy"])
def test_a_full_disk_is_one_error_line_and_leaves_nothing(
  run, tmp_path, monkeypatch, capsys, where
):
  """No space left while writing model.safetensors (a SafetensorError) or a tokenizer file
  (an OSError): one `error:` line, and neither the output nor a .tmp- directory is left."""
  _, workdir = run
  if where == "safetensors":

    def full(*args, **kwargs):
      raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
        'space left on device" })'
      )

    monkeypatch.setattr(hf_io, "save_file", full)
  else:

    def full(*args, **kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.shutil, "copyfile", full)
  out = tmp_path / "hf"
  status = cli.call(
    export.main, export.FLAGS, ["export", f"--workdir={workdir}", f"--output={out}"]
  )
  err = capsys.readouterr().err
  assert status == 1 and len(err.splitlines()) == 1, err
  assert err.startswith(f"error: writing the export to {out} failed: No space left on device; ")
  assert "free some space or choose another --output" in err
  assert os.listdir(tmp_path) == []


@needs_data
@pytest.mark.parametrize("run", ["lora"], indirect=True)  # Once is enough.
def test_a_damaged_latest_step_exports_and_reports_the_step_restored(run, tmp_path):
  """The latest step (4) does not restore: export falls back to step 2 with a warning, and
  says step 2 in its line and in mtl_jax.json (it said step 4, with step 2's weights)."""
  _, workdir = run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  latest = copy / "checkpoints" / "4"
  shutil.copytree(copy / "checkpoints" / "2", latest)
  for d, _, names in os.walk(latest):  # The OCDBT data files, cut to half their size.
    for name in names if os.path.basename(d) == "d" else []:
      os.truncate(os.path.join(d, name), os.path.getsize(os.path.join(d, name)) // 2)
  proc = _cli("--workdir", str(copy), "--output", str(tmp_path / "hf"))
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "newer step 4 does not restore" in proc.stderr, proc.stderr[-3000:]
  assert "encoder of step 2 " in proc.stdout, proc.stdout
  with open(tmp_path / "hf" / "mtl_jax.json") as f:
    assert json.load(f)["source"]["step"] == 2
  assert os.path.isdir(latest)  # A reader moves nothing.


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "mtl_jax.export", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_errors_are_one_line(tmp_path):
  """Bad workdirs and a non-empty output: a clear message and exit code 1, no traceback."""
  not_a_run = tmp_path / "not_a_run"
  not_a_run.mkdir()
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text("{}")
  full = tmp_path / "full"
  full.mkdir()
  (full / "x").write_text("x")
  (no_ckpt / "checkpoints").mkdir()
  cases = [
    (
      ["--workdir", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
      "does not exist",
    ),
    (["--workdir", str(not_a_run), "--output", str(tmp_path / "o")], "no config.json"),
    (["--workdir", str(no_ckpt), "--output", str(full)], "--overwrite"),
  ]
  for args, message in cases:
    proc = _cli(*args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "o").exists() and os.listdir(full) == ["x"]


def test_pretrained_pooler_is_read_from_a_sharded_model(tiny_bert_dir, tmp_path):
  """A base model saved in shards (model.safetensors.index.json) exports its pooler too."""
  single = load_file(os.path.join(tiny_bert_dir, "model.safetensors"))
  sharded = tmp_path / "sharded"
  sharded.mkdir()
  shard_checkpoint(str(sharded), single, shards=2)
  pooler = export._pretrained_pooler(str(sharded))
  assert sorted(pooler) == ["pooler.dense.bias", "pooler.dense.weight"]
  np.testing.assert_array_equal(pooler["pooler.dense.weight"], single["bert.pooler.dense.weight"])
