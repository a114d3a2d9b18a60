"""A run's training fingerprint: provenance by behaviour rather than by commit.

Two rows of a ledger trained the same way when their trainers computed the same step on the
same batches with the same dropout. A commit says which code was checked out; it does not
say whether that code trains differently from another commit's (a refactor, a docstring, a
new tool do not; a changed default, a reordered reduction or another dropout stream do).
So the fingerprint is three hashes, computed from the run's config by the code that would
train it, without training:

- `step`: the StableHLO text of the train step (`step.make_train_step`, lowered by
  `jax.jit(...).lower(...)` on the run's state and its first batch's shapes): the
  computation itself, with the config's constants in it (gradient method and its
  arguments, dropout rates, learning-rate schedule, optimizer, heads). It is lowered with
  the seed, and every `...seed` key equal to it (PCGrad's `grad.kwargs.seed` follows the
  seed), set to 0: the seed's part is in the other two hashes, so the runs of one
  configuration at several seeds share one step hash. Python locations are not in the
  text (`as_text()` without debug info), and the module's name is normalized, so moving or
  renaming code leaves it unchanged.
- `batches`: the first STEPS training batches (`train.train_batches`: schedule, sampling,
  length buckets, packing): the examples each step trains on, in order, as token ids.
- `dropout`: the dropout keys of the first STEPS steps (`step.dropout_keys`).

`fingerprint` is `<step 12 hex>/<batches 8 hex>/<dropout 8 hex>`. The sweep computes it
when it appends a row (`ledger.COLUMNS`' `fingerprint`), and the report groups rows by it:
one step hash per configuration (all its seeds trained the same computation), and per
seed one batches/dropout pair across configurations (the pairing of the comparisons:
every configuration trained seed S on the same examples with the same dropout keys).
It is a function of the config, the code, the data files and the number of devices (the
packing of a step depends on it): not of the machine's CPU, whose kernels may still round
differently (docs/results.md).
"""

from __future__ import annotations

import hashlib
import re

import jax
import ml_collections
import numpy as np

STEPS = 2  # Batches and dropout keys hashed: the schedule's start (its order is seeded).
_MODULE_NAME = re.compile(r"^module @[\w.$-]+", re.M)


def _sha(*parts: bytes) -> str:
  h = hashlib.sha256()
  for p in parts:
    h.update(len(p).to_bytes(8, "little"))
    h.update(p)
  return h.hexdigest()


def _batch_bytes(batch: dict) -> bytes:
  """Every array of a batch, by sorted key, with its dtype and shape."""
  out = []
  for k in sorted(batch):
    a = np.ascontiguousarray(np.asarray(batch[k]))
    out += [k.encode(), str(a.dtype).encode(), repr(a.shape).encode(), a.tobytes()]
  return _sha(*out).encode()


def seed_free(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with `seed` and every key named `seed` that equals it set to 0."""
  seed = config.seed
  out = ml_collections.ConfigDict(config.to_dict())

  def visit(node: ml_collections.ConfigDict) -> None:
    for k in list(node.keys()):
      v = node[k]
      if isinstance(v, ml_collections.ConfigDict):
        visit(v)
      elif k == "seed" and v == seed and not isinstance(v, bool):
        node[k] = 0

  visit(out)
  return out


def step_text(config: ml_collections.ConfigDict, batch: dict) -> str:
  """The StableHLO text of the train step of `config` on `batch`'s shapes, module name
  normalized (what `step` hashes, of the seed_free config)."""
  from mtl_jax import train
  from mtl_jax.config import run_spec
  from mtl_jax.step import make_train_step

  spec = run_spec.build(config)
  model, state, frozen, tx = train.init_state(spec)
  step = make_train_step(model, tx, tuple(range(len(spec.tasks))), config.seed, smart=spec.smart)
  lowered = jax.jit(step, donate_argnums=(0,)).lower(state, frozen, batch)
  return _MODULE_NAME.sub("module @train_step", lowered.as_text(), count=1)


def training_fingerprint(config: ml_collections.ConfigDict, steps: int = STEPS) -> dict:
  """{"fingerprint", "step", "batches", "dropout"} of a validated config (module docstring).

  Loads the tokenizer, the data and the model's weights as the trainer does and lowers
  (does not compile) its step: a small fraction of a run (docs/results.md gives its cost)."""
  from mtl_jax import train
  from mtl_jax.config import run_spec
  from mtl_jax.runtime import parallel
  from mtl_jax.step import dropout_keys

  spec = run_spec.build(config, parallel.make_mesh().size)
  data = train.load_data(spec, spec.tokenizer())
  batches = train.train_batches(spec, data["train"])
  first = [batches(k) for k in range(steps)]
  keys = [
    np.asarray(jax.random.key_data(dropout_keys(config.seed, k, len(spec.tasks))))
    for k in range(steps)
  ]
  parts = {
    "step": _sha(step_text(seed_free(config), first[0]).encode()),
    "batches": _sha(*(_batch_bytes(b) for b in first)),
    "dropout": _sha(*(k.tobytes() for k in keys)),
  }
  fp = f"{parts['step'][:12]}/{parts['batches'][:8]}/{parts['dropout'][:8]}"
  return {"fingerprint": fp, **parts}
