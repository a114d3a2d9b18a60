"""A short LoRA training run at BERT-base size (12 layers, hidden 768, 12 heads, vocabulary
30,522; random weights from scripts/make_bert_base.py), so that nothing in the trainer,
the adapters, the heads or the checkpoints assumes the bundled MiniLM's sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import needs_data, shrink

from mtl_jax import train
from mtl_jax.models import hf_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENCODER_PARAMS = 108_891_648  # BERT-base without its pooler.


@pytest.fixture(scope="module")
def bert_base_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("bert_base"))
  subprocess.run(
    [sys.executable, os.path.join(ROOT, "scripts", "make_bert_base.py"), path],
    check=True,
    capture_output=True,
    timeout=300,
  )
  return path


@pytest.mark.slow
@needs_data
def test_lora_trains_at_bert_base_size(bert_base_dir, tmp_path):
  config = hf_io.read_config(bert_base_dir)
  assert (
    config.num_layers,
    config.hidden_size,
    config.num_heads,
    config.vocab_size,
    config.intermediate_size,
  ) == (12, 768, 12, 30522, 3072)
  from mtl_jax.config import defaults as default

  config = shrink(default.get_config(), bert_base_dir)
  # The sizes are what is tested, not the data: 8 rows per file, 4 sequences of 16 tokens
  # per task and step. At this size the run's CPU time is the model's arithmetic (a step,
  # and the dev sets' forward passes), which grows with the tokens.
  config.model.max_length = 16
  config.data_limit = 8
  config.train.steps = 2
  config.train.seqs_per_task = 4
  config.train.length_buckets = (16,)
  config.train.checkpoint_every = 2
  config.eval.seqs_per_batch = 8
  config.eval.write_predictions = False
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)

  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 2
  # LoRA r=8 on query and value of 12 layers (A [768, 8] + B [8, 768] each) + the heads:
  # SST linear 768 -> 5, Quora linear on [u; v; |u-v|; u*v] (4 x 768 -> 1).
  lora = 12 * 2 * (768 * 8 + 8 * 768)
  heads = (768 * 5 + 5) + (4 * 768 + 1)
  assert results["trainable_params"] == lora + heads
  assert results["params"] == ENCODER_PARAMS + lora + heads
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert all(np.isfinite(v) for v in metrics.values())
  restored = train.restore(workdir)[2]  # The checkpoint holds BERT-base's LoRA leaves.
  a = restored.trainable["encoder"]["layer_11"]["attention"]["query"]["lora"]["a"]
  assert a.shape == (768, 8)
