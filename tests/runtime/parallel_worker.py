"""Run by tests/runtime/test_parallel.py in a fresh process with 4 CPU devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/runtime/parallel_worker.py MODEL OUT

(the flag must be set before jax starts, so not in the pytest process). Writes OUT/worker.json:
the per-task gradients and PCGrad update on 4 devices vs 1, the per-device counter-example,
how the batches were sharded, and the losses of two 4-device trainer runs (replicated and
fsdp parameters) whose checkpoints the test compares with a 1-device run.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]  # conftest's helpers; the checkout's mtl_jax.
from conftest import tiny_config  # noqa: E402

from mtl_jax import grad as mtlgrad  # noqa: E402
from mtl_jax import train  # noqa: E402
from mtl_jax.config import run_spec  # noqa: E402
from mtl_jax.data import batching, packing  # noqa: E402
from mtl_jax.models import hf_io, multitask  # noqa: E402
from mtl_jax.runtime import parallel  # noqa: E402
from mtl_jax.step import make_per_task_grads  # noqa: E402
from mtl_jax.tasks import TASKS  # noqa: E402


def worker_config(model_dir: str):
  """One bucket, no predictions: the fewest compilations for the comparison."""
  config = tiny_config(model_dir, steps=3, length_buckets=(32,), checkpoint_every=3)
  config.eval.write_predictions = False
  return config


def _relative(a, b) -> float:
  """||a - b|| / ||b|| over all leaves of two trees."""
  diff = sum(
    float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  norm = sum(float(np.sum(np.asarray(y) ** 2)) for y in jax.tree.leaves(b))
  return (diff / norm) ** 0.5


def gradient_check(config) -> dict:
  """Per-task gradients and the PCGrad update of one batch: the batch split over 4 devices
  vs whole on 1; and each of 4 "devices" projecting its own quarter of the examples."""
  data = train.load_data(run_spec.build(config), hf_io.load_tokenizer(config.model.path))
  model, state, frozen, _ = train.init_state(run_spec.build(config))
  method = mtlgrad.shared_only(run_spec.grad_method(config), multitask.is_shared(state.trainable))
  per_task = make_per_task_grads(model)
  keys = jax.random.split(jax.random.key(config.seed), len(TASKS))
  batch = batching.train_batch(data["train"], 0, config.train.seqs_per_task, config.seed, (32,))

  def grads_and_update(trainable, frozen, batch):
    _, grads = per_task(trainable, frozen, batch, jnp.arange(len(TASKS)), keys)
    update, _ = method.update(grads, method.init(trainable), trainable)
    return grads, update

  def on(mesh, batch):
    rep = parallel.replicated(mesh)
    sharded = parallel.put_batch(batch, parallel.batch_sharding(mesh, 1))
    out = jax.jit(grads_and_update, out_shardings=rep)(
      jax.device_put(state.trainable, rep), jax.device_put(frozen, rep), sharded
    )
    return jax.device_get(out), sharded

  (g4, u4), sharded = on(parallel.make_mesh(), batch)
  one = parallel.make_mesh(jax.devices()[:1])
  g1, u1 = on(one, batch)[0]
  # Packed, rows split over the 4 devices: the gradients and update of the packed batch on
  # one device (not of the unpacked one: dropout masks are drawn over the packed shape).
  packed = packing.pack_stack(batch, packing.PackPlan((32,), jax.device_count()))
  (gp, up), packed_sharded = on(parallel.make_mesh(), packed)
  gp1, up1 = on(one, packed)[0]
  # The other algorithm: device d computes the per-task gradients of its own quarter of
  # each task's examples (mean loss over them), applies PCGrad, and the updates are averaged.
  n, local = jax.device_count(), []
  for d in range(n):
    weights = np.zeros_like(batch["weights"])
    for t, task_data in enumerate(data["train"]):
      block = batching.examples_per_batch(task_data, config.train.seqs_per_task) // n
      weights[t, d * block : (d + 1) * block] = batch["weights"][t, d * block : (d + 1) * block]
    local.append(on(one, dict(batch, weights=weights))[0])
  mean = lambda trees: jax.tree.map(lambda *x: np.mean(x, axis=0), *trees)
  return {
    "devices": n,
    "grads_4_vs_1": _relative(g4, g1),
    "update_4_vs_1": _relative(u4, u1),
    "mean_local_grads_vs_global": _relative(mean([g for g, _ in local]), g1),
    "mean_local_updates_vs_global": _relative(mean([u for _, u in local]), u1),
    "batch_devices": len(sharded["input_ids"].sharding.device_set),
    "batch_shards": [list(s.data.shape) for s in sharded["input_ids"].addressable_shards],
    "packed_grads_vs_1": _relative(gp, gp1),
    "packed_update_vs_1": _relative(up, up1),
    "packed_shards": [list(s.data.shape) for s in packed_sharded["input_ids"].addressable_shards],
  }


def trainer_run(config, workdir: str) -> dict:
  """train_and_evaluate on every device, recording the shardings it asks for."""
  seen = {"train_batch": set(), "param_specs": set()}
  put_batch, param_shardings = parallel.put_batch, parallel.param_shardings

  def recording_put_batch(batch, sharding):
    out = put_batch(batch, sharding)
    if out["input_ids"].ndim == 3:
      seen["train_batch"].add(
        json.dumps(
          {
            "devices": len(out["input_ids"].sharding.device_set),
            "shards": [list(s.data.shape) for s in out["input_ids"].addressable_shards],
          }
        )
      )
    return out

  def recording_param_shardings(tree, mesh, mode):
    out = param_shardings(tree, mesh, mode)
    seen["param_specs"].update(str(s.spec) for s in jax.tree.leaves(out))
    return out

  parallel.put_batch, parallel.param_shardings = recording_put_batch, recording_param_shardings
  try:
    results = train.train_and_evaluate(config, workdir)
  finally:
    parallel.put_batch, parallel.param_shardings = put_batch, param_shardings
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  return {
    "losses": losses,
    "overall": results["overall"],
    "train_batch": [json.loads(s) for s in sorted(seen["train_batch"])],
    "param_specs": sorted(seen["param_specs"]),
  }


def main(model_dir: str, out: str) -> None:
  config = worker_config(model_dir)
  report = {
    "gradients": gradient_check(config),
    "replicated": trainer_run(config, os.path.join(out, "replicated")),
  }
  parallel.FSDP_MIN_SIZE = 64  # Also split the tiny model's LoRA leaves and their Adam moments.
  config.train.param_sharding = "fsdp"
  report["fsdp"] = trainer_run(config, os.path.join(out, "fsdp"))
  with open(os.path.join(out, "worker.json"), "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main(*sys.argv[1:])
