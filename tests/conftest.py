"""Shared fixtures: a tiny random Hugging Face BERT directory built from tests/fixtures.

`tiny_bert_dir` holds config.json, model.safetensors (the tiny_bert.npz weights, with their
`bert.` prefix, pooler and pre-training heads) and a small vocab.txt, so it works both
with `hf_io.load_bert` and with `hf_io.load_tokenizer`. It is session-scoped: tests must
treat it as read-only.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from mtl_jax import tasks, train
from mtl_jax.config import defaults as default
from mtl_jax.config import run_spec
from mtl_jax.data import schedules
from mtl_jax.data.batching import Encoded
from mtl_jax.data.files import default_data_dir
from mtl_jax.runtime.checkpoint import Checkpointer

# Tests compile hundreds of small XLA programs and run each for milliseconds, so compiling
# is most of their CPU time. Without LLVM's optimisation passes a tiny training run took 24 s
# instead of 39 s of CPU; with XLA:CPU's older fusion emitters (LLVM IR, not the MLIR
# pipeline each fusion otherwise goes through) the tiny model's train step compiles in
# 2.6 s instead of 5.2 s of CPU and a tiny run from a cold cache takes 13 s instead of 20 s
# (2-core AVX2 EPYC). Both only change how XLA generates code, not what it computes. Set
# before jax starts its backend, and inherited by the subprocesses tests start (a test that
# sets XLA_FLAGS for a child appends to these). jax_exec_time_optimization_effort changed
# nothing on CPU.
_TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
for _flag in _TEST_XLA_FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

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


# --- Tiny training runs on a slice of the real data

DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason=f"no data at {DATA_DIR}")


def shrink(config, model_dir: str):
  """`config` on the tiny model, 40 rows of each data file and 4 small steps (in place)."""
  config.model.path = model_dir
  config.model.max_length = 32
  config.data_dir = DATA_DIR
  config.data_limit = 40
  config.train.length_buckets = (16, 32)
  config.train.seqs_per_task = 8
  config.train.steps = 4
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.eval.seqs_per_batch = 16
  return config


def tiny_config(model_dir: str, **train_overrides):
  config = shrink(default.get_config(), model_dir)
  config.grad.method = "pcgrad"
  config.train.update(train_overrides)
  return config


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def trainable_restorer(config):
  """restore(workdir, step=None) -> the trainable parameters of its checkpoint at `step`
  (default: the newest that restores), every restore into one template state of `config`
  (initialising it is the costly part)."""
  _, state, _, _ = train.init_state(run_spec.build(config))
  return lambda workdir, step=None: Checkpointer(workdir, 1, 1).restore(state, step)[0].trainable


def restored_trainable(config, workdir):
  return trainable_restorer(config)(workdir)


def interrupt_at(monkeypatch, step: int) -> None:
  """Makes the trainer's draw of `step` raise KeyboardInterrupt (a host-side Ctrl-C). It
  patches `Batches.__call__`, not the batch builder, which set-up also calls (slot choice)."""
  draw = schedules.Batches.__call__

  def interrupted(self, s):
    if s == step:
      raise KeyboardInterrupt
    return draw(self, s)

  monkeypatch.setattr(schedules.Batches, "__call__", interrupted)


def assert_same_run(config, straight: str, resumed: str, last_step: int) -> None:
  """The resumed workdir ends with the straight one's parameters and last loss, bitwise."""
  restore = trainable_restorer(config)
  a, b = restore(straight), restore(resumed)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  losses = lambda w: {r["step"]: r["loss"] for r in read_metrics(w) if "loss" in r}
  assert losses(straight)[last_step] == losses(resumed)[last_step]


# --- Configs and synthetic data


def default_config_with(**overrides) -> ml_collections.ConfigDict:
  """configs/default.py with dotted-key overrides, and a non-empty model path."""
  config = default.get_config()
  # Rebuild the section with a str path: the bundled path comes as a PosixPath, which
  # (being ConfigDict-typed) would refuse str overrides (see test_model_path_is_a_str).
  config.model = ml_collections.ConfigDict(
    dict(config.model.to_dict(), path=str(config.model.path or "/some/bert"))
  )
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    assert leaf in node, f"config has no key {key} (an unlocked ConfigDict would add it)"
    node[leaf] = value
  return config


def _seq(i: int, which: int, length: int) -> np.ndarray:
  """[CLS]-like 101, then ids unique to (example i, sentence `which`), nonzero."""
  body = np.full(length - 1, 1000 * (which + 1) + i, np.int32)
  return np.concatenate([[101], body]).astype(np.int32)


def make_data(
  task: str, n: int, seed: int = 0, max_len: int = 30, labels: bool = True, split: str = "train"
) -> Encoded:
  rng = np.random.default_rng(seed)
  pair = tasks.get(task).is_pair
  first = [_seq(i, 0, int(rng.integers(2, max_len + 1))) for i in range(n)]
  second = [_seq(i, 1, int(rng.integers(2, max_len + 1))) for i in range(n)] if pair else None
  lab = None
  if labels:
    lab = (
      rng.integers(0, 5, n).astype(np.int32)
      if task == "sst"
      else rng.uniform(0, 5, n).astype(np.float32)
    )
  return Encoded(task, split, [f"id{i}" for i in range(n)], first, second, lab)


@pytest.fixture(scope="session")
def tiny_bert_ref() -> dict:
  return load_npz("tiny_bert.npz")


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_bert_ref, tmp_path_factory) -> str:
  """Path of a tiny random BERT (hidden 32, 2 layers, 4 heads, vocab 128) HF directory."""
  assert len(VOCAB) <= 128
  return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tiny_bert_ref)


@pytest.fixture(scope="session")
def one_layer_bert_dir(tiny_bert_ref, tmp_path_factory) -> str:
  """The tiny BERT's first layer alone (config num_hidden_layers=1): half the encoder to
  compile, the same code, for tests whose check does not need a second layer."""
  ref = {k: v for k, v in tiny_bert_ref.items() if ".layer.1." not in k}
  config = json.loads(str(ref["config_json"]))
  ref["config_json"] = json.dumps(dict(config, num_hidden_layers=1))
  return write_tiny_bert(tmp_path_factory.mktemp("one_layer_bert"), ref)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Trainer tests build the same jitted steps repeatedly; reuse XLA compilations. One
  cache for the whole run: both pytest-xdist workers (and the main.py processes tests
  start) compile the same tiny-model steps, so what one compiled the other loads."""
  import jax

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp is <run>/popen-gwN: share <run>.
    root = root.parent
  cache = os.path.join(str(root), "xla_cache")
  os.makedirs(cache, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache)
  # main.py run as a subprocess uses it too (mtl_jax.runtime.compile_cache), not the user's cache.
  os.environ["MTL_JAX_COMPILATION_CACHE"] = cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # And the subprocesses keep every program too, not only those that took over a second
  # (jax's default): a tiny run's predict functions compile in less.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


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
  "test_task_specific.py",
  "test_schedules.py",
  "test_packing.py",
  "test_smart.py",
  "test_diagnose.py",
  "test_bert_base.py",
  "test_hub_and_cache.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable within a file.
