"""Shared fixtures: a tiny random Hugging Face BERT directory built from tests/fixtures.

`tiny_bert_dir` holds config.json, model.safetensors (the tiny_bert.npz weights, with their
`bert.` prefix, pooler and pre-training heads) and a small vocab.txt, so it works both
with `hf_io.load_bert` and with `hf_io.load_tokenizer`. It is session-scoped: tests must
treat it as read-only.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

# Tests compile hundreds of small XLA programs and run each for milliseconds, so LLVM's
# optimisation passes are most of their CPU time: without them a tiny training run took 24 s
# instead of 39 s of CPU (2-core AVX2 EPYC). Set before jax starts its backend, and inherited
# by the subprocesses tests start. (jax_exec_time_optimization_effort changed nothing on CPU.)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# 5 special tokens + words + single characters; must stay within the tiny model's
# vocab_size (128) so that every id has an embedding row.
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
  "the",
  "a",
  "cat",
  "dog",
  "sat",
  "on",
  "mat",
  "is",
  "was",
  "good",
  "bad",
  "movie",
  "very",
  "not",
  "and",
  "it",
  "this",
  "that",
  "what",
  "how",
  "why",
  "do",
  "you",
  "are",
  "same",
  "question",
  "##s",
  "##ing",
  "##ed",
  ".",
  ",",
  "?",
  "!",
]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
VOCAB = _SPECIAL + _WORDS + _CHARS


def load_npz(name: str) -> dict:
  with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def write_tiny_bert(dirpath, ref: dict, rename=None, vocab: bool = True) -> str:
  """Writes tiny_bert.npz's checkpoint as a Hugging Face BERT directory at `dirpath`."""
  os.makedirs(dirpath, exist_ok=True)
  with open(os.path.join(dirpath, "config.json"), "w") as f:
    f.write(str(ref["config_json"]))
  weights = {}
  for k, v in ref.items():
    if k.startswith("weights/"):
      name = k[len("weights/") :]
      if rename is not None:
        name = rename(name)
      weights[name] = np.ascontiguousarray(v)
  save_file(weights, os.path.join(dirpath, "model.safetensors"))
  if vocab:
    with open(os.path.join(dirpath, "vocab.txt"), "w") as f:
      f.write("\n".join(VOCAB) + "\n")
  return str(dirpath)


def shard_checkpoint(directory, tensors: dict, shards: int) -> None:
  """Writes `tensors` as save_pretrained writes a large model: shards and their index."""
  names = sorted(tensors)
  weight_map = {}
  for i in range(shards):
    file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[i::shards]}
    save_file(part, os.path.join(directory, file))
    weight_map.update(dict.fromkeys(part, file))
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def tiny_main_args(model_dir: str, workdir, *overrides: str) -> list[str]:
  """`python main.py` on the tiny model and 40 rows of each data file, plus `overrides`
  (for tests that run the trainer as a user does: a subprocess)."""
  import sys

  from mtl_jax.data.files import default_data_dir

  return [
    sys.executable,
    "main.py",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    f"--config.model.path={model_dir}",
    f"--config.data_dir={default_data_dir()}",
    "--config.model.max_length=32",
    "--config.data_limit=40",
    "--config.train.length_buckets=(32,)",
    "--config.train.seqs_per_task=8",
    "--config.eval.seqs_per_batch=16",
    *overrides,
  ]


@pytest.fixture(scope="session")
def tiny_bert_ref() -> dict:
  return load_npz("tiny_bert.npz")


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_bert_ref, tmp_path_factory) -> str:
  """Path of a tiny random BERT (hidden 32, 2 layers, 4 heads, vocab 128) HF directory."""
  assert len(VOCAB) <= 128
  return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tiny_bert_ref)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Trainer tests build the same jitted steps repeatedly; reuse XLA compilations."""
  import jax

  cache = str(tmp_path_factory.mktemp("xla_cache"))
  jax.config.update("jax_compilation_cache_dir", cache)
  # main.py run as a subprocess uses it too (mtl_jax.compile_cache), not the user's cache.
  os.environ["MTL_JAX_COMPILATION_CACHE"] = cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# `make test` hands whole files to two pytest-xdist workers (--dist loadfile) in collection
# order, which is alphabetical, and the files that train tiny runs sort last: one worker
# then ran the last ten minutes alone. Those files go first, slowest first, so the short
# ones fill in at the end. Measured per file on a 2-core AVX2 machine; only the order changes.
_SLOW_FILES = (
  "test_sweep.py",
  "test_parallel.py",
  "test_multiprocess.py",
  "test_robustness.py",
  "test_export.py",
  "test_train.py",
  "test_seed_configs.py",
  "test_task_layers.py",
  "test_schedules.py",
  "test_packing.py",
  "test_diagnose.py",
  "test_bert_base.py",
  "test_hub_and_cache.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable within a file.
