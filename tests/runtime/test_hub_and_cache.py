"""Hub ids as model.path (from a hand-made offline cache) and the persistent compilation cache."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mtl_jax.runtime import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HUB_ID = "someone/tiny-bert"


def _hub_cache(tmp_path, model_dir) -> str:
  """Lays out HF_HOME/hub/models--someone--tiny-bert as huggingface_hub writes it."""
  home = tmp_path / "hf_home"
  repo = home / "hub" / "models--someone--tiny-bert"
  snapshot = repo / "snapshots" / "0123456789abcdef"
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0123456789abcdef")
  for name in os.listdir(model_dir):
    shutil.copy(os.path.join(model_dir, name), snapshot / name)
  return str(home)


def _embed(tmp_path, model: str, env: dict, out: str) -> subprocess.CompletedProcess:
  sentences = tmp_path / "in.txt"
  sentences.write_text("the cat sat on the mat .\na good movie\n")
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.embed",
      f"--model={model}",
      f"--input={sentences}",
      f"--output={tmp_path / out}",
      "--max_length=32",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **env},
  )


def test_hub_id_resolves_from_an_offline_cache(tiny_bert_dir, tmp_path):
  env = {"HF_HOME": _hub_cache(tmp_path, tiny_bert_dir), "HF_HUB_OFFLINE": "1"}
  by_id = _embed(tmp_path, HUB_ID, env, "by_id.npz")
  assert by_id.returncode == 0, by_id.stderr[-2000:]
  by_dir = _embed(tmp_path, tiny_bert_dir, env, "by_dir.npz")
  assert by_dir.returncode == 0, by_dir.stderr[-2000:]
  a, b = np.load(tmp_path / "by_id.npz"), np.load(tmp_path / "by_dir.npz")
  np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  np.testing.assert_array_equal(a["pooled"], b["pooled"])


def test_uncached_hub_id_offline_is_one_clear_line(tmp_path):
  env = {"HF_HOME": str(tmp_path / "empty_home"), "HF_HUB_OFFLINE": "1"}
  out = _embed(tmp_path, "someone/not-cached", env, "o.npz")
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1, out.stderr[-2000:]
  assert "'someone/not-cached' is not a local directory, not in the Hugging Face cache" in error[0]
  assert "HF_HUB_OFFLINE" in error[0] and "model.path" in error[0]


def test_a_path_that_is_not_a_hub_id_is_reported_as_a_missing_directory(tmp_path):
  from mtl_jax.models import hf_io

  for path in (str(tmp_path / "nope"), "./nope", "a/b/c"):
    with pytest.raises(hf_io.CheckpointError, match="does not exist"):
      hf_io.local_dir(path)


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, "/home/u/.cache/mtl_jax/xla"),
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/mtl_jax/xla"),
    ({"MTL_JAX_COMPILATION_CACHE": "/mine"}, "/mine"),
    ({"JAX_COMPILATION_CACHE_DIR": "/jax", "MTL_JAX_COMPILATION_CACHE": "/mine"}, "/jax"),
    ({"MTL_JAX_COMPILATION_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": "/jax"}, None),
    ({"MTL_JAX_COMPILATION_CACHE": "0"}, None),
  ],
)
def test_compilation_cache_directory(monkeypatch, env, expected):
  monkeypatch.setenv("HOME", "/home/u")
  assert compile_cache.cache_dir({"HOME": "/home/u", **env}) == expected


def test_second_identical_run_compiles_nothing_new(tiny_bert_dir, tmp_path):
  """The first run fills the cache; an identical second run finds every step in it."""
  from mtl_jax.data.files import default_data_dir

  if not os.path.isdir(default_data_dir()):
    pytest.skip("no data")
  cache = tmp_path / "cache"
  env = {
    **os.environ,
    "MTL_JAX_COMPILATION_CACHE": str(cache),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }

  def run(workdir):
    args = [
      sys.executable,
      "main.py",
      "--config=configs/default.py",
      f"--workdir={workdir}",
      f"--config.model.path={tiny_bert_dir}",
      f"--config.data_dir={default_data_dir()}",
      "--config.model.max_length=32",
      "--config.data_limit=40",
      "--config.train.length_buckets=(32,)",
      "--config.train.seqs_per_task=8",
      "--config.train.steps=2",
      "--config.eval.seqs_per_batch=8",
    ]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(os.listdir(cache))

  first = run(tmp_path / "a")
  assert len(first) >= 2  # At least the train step and the evaluation function.
  second = run(tmp_path / "b")
  assert second == first
