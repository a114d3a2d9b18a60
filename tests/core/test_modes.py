"""Every fine-tuning mode trains what it says and nothing else (tiny model, real data slice)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_data, restored_trainable, tiny_config
from flax import traverse_util

from mtl_jax import train
from mtl_jax.config import run_spec


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@needs_data
@pytest.mark.parametrize(
  "mode, grad_method, expect_prefixes",
  [
    ("probe", "pcgrad", ("heads/",)),
    ("full", "cagrad", ("encoder/", "heads/")),
    ("dora", "mgda", ("encoder/", "heads/")),
  ],
)
def test_mode_trains_only_its_leaves(tiny_bert_dir, tmp_path, mode, grad_method, expect_prefixes):
  config = tiny_config(tiny_bert_dir, steps=2, learning_rate=1e-2)
  config.adapter.kind = mode
  config.grad.method = grad_method
  config.eval.write_predictions = False
  workdir = str(tmp_path / mode)
  _, initial, _, _ = train.init_state(run_spec.build(config))
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["overall"])

  before, after = _flat(initial.trainable), _flat(restored_trainable(config, workdir))
  assert before.keys() == after.keys()
  assert all(k.startswith(expect_prefixes) for k in after)
  if mode == "dora":  # Only adapter leaves of the encoder train.
    assert all("/lora/" in k for k in after if k.startswith("encoder/"))
    assert any(k.endswith("lora/magnitude") for k in after)
  if mode == "full":  # Every encoder weight trains, embeddings included.
    assert "encoder/embeddings/word_embeddings/embedding" in after
  changed = [k for k in after if not np.array_equal(before[k], after[k])]
  assert any(k.startswith("heads/") for k in changed)
  if mode != "probe":
    assert any(k.startswith("encoder/") for k in changed)
