"""mtl_jax.study.fingerprint on the tiny model: the same config gives the same fingerprint
(also through code that is rearranged but trains the same, and with other logging or
evaluation settings); a training-relevant option changes it, in the part it should."""

from __future__ import annotations

import jax
import pytest
from conftest import needs_data, tiny_config

from mtl_jax import step as step_lib
from mtl_jax.study import fingerprint

pytestmark = needs_data


@pytest.fixture(scope="module")
def base(tiny_bert_dir):
  return fingerprint.training_fingerprint(tiny_config(tiny_bert_dir))


def test_same_config_same_fingerprint(tiny_bert_dir, base):
  step, batches, dropout = base["fingerprint"].split("/")
  assert (step, batches, dropout) == (base["step"][:12], base["batches"][:8], base["dropout"][:8])
  assert fingerprint.training_fingerprint(tiny_config(tiny_bert_dir)) == base
  quiet = tiny_config(tiny_bert_dir, log_every=3, checkpoint_every=4)  # Not training.
  quiet.eval.seqs_per_batch = 8
  assert fingerprint.training_fingerprint(quiet) == base


def test_code_that_trains_the_same_keeps_it(tiny_bert_dir, base, monkeypatch):
  original = step_lib.make_train_step

  def rearranged(*args, **kwargs):  # Another function (another jit name), the same computation.
    inner = original(*args, **kwargs)

    def another_name(state, frozen, batch):
      return inner(state, frozen, batch)

    return another_name

  monkeypatch.setattr(step_lib, "make_train_step", rearranged)
  assert fingerprint.training_fingerprint(tiny_config(tiny_bert_dir)) == base

  def halved(*args, **kwargs):  # Trains differently: halves the parameters after each step.
    inner = original(*args, **kwargs)

    def step(state, frozen, batch):
      new, metrics = inner(state, frozen, batch)
      return new._replace(trainable=jax.tree.map(lambda x: x / 2, new.trainable)), metrics

    return step

  monkeypatch.setattr(step_lib, "make_train_step", halved)
  assert fingerprint.training_fingerprint(tiny_config(tiny_bert_dir))["step"] != base["step"]


def test_training_options_change_it(tiny_bert_dir, base):
  summed = tiny_config(tiny_bert_dir)
  summed.grad.method = "sum"  # tiny_config trains PCGrad.
  got = fingerprint.training_fingerprint(summed)
  assert got["step"] != base["step"] and got["fingerprint"] != base["fingerprint"]
  assert (got["batches"], got["dropout"]) == (base["batches"], base["dropout"])

  smart = tiny_config(tiny_bert_dir)
  smart.train.smart.weight = 1.0  # SMART's regularizer is in the step.
  got = fingerprint.training_fingerprint(smart)
  assert got["step"] != base["step"] and got["batches"] == base["batches"]

  dropout = tiny_config(tiny_bert_dir)
  dropout.model.head_dropout = 0.3
  got = fingerprint.training_fingerprint(dropout)
  assert got["step"] != base["step"] and got["batches"] == base["batches"]

  seed = tiny_config(tiny_bert_dir)
  seed.seed = seed.grad.kwargs.seed = 1
  got = fingerprint.training_fingerprint(seed)
  assert got["batches"] != base["batches"] and got["dropout"] != base["dropout"]
  assert got["step"] == base["step"]  # PCGrad's grad.kwargs.seed set to the seed: as sweeps do.
