"""Data parallelism (mtl_jax.runtime.parallel): 4 forced CPU devices give the 1-device run's losses
and parameters, the batch is really split, the grad method sees the all-reduced per-task
gradients; plus the sharding rules, the device-count check and multi-host detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import needs_data, read_metrics, trainable_restorer
from jax.sharding import PartitionSpec as P
from parallel_worker import worker_config

from mtl_jax import train
from mtl_jax.config import run_spec
from mtl_jax.runtime import parallel

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_worker.py")


@needs_data
def test_four_devices_match_one_device(tiny_bert_dir, tmp_path):
  env = dict(
    os.environ,
    XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip(),
  )
  worker = subprocess.Popen(
    [sys.executable, WORKER, tiny_bert_dir, str(tmp_path)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  config = worker_config(tiny_bert_dir)  # Meanwhile, the same run here on one device.
  one = str(tmp_path / "one_device")
  train.train_and_evaluate(config, one)
  output = worker.communicate(timeout=900)[0]
  assert worker.returncode == 0, output[-4000:]
  with open(tmp_path / "worker.json") as f:
    report = json.load(f)

  # The step's gradients are global: the same on 4 devices as on 1, before and after PCGrad.
  g = report["gradients"]
  assert g["devices"] == 4 and g["batch_devices"] == 4
  assert g["batch_shards"] == [[3, 2, 32]] * 4  # [T, S/4, L] on each device.
  assert g["grads_4_vs_1"] < 1e-5 and g["update_4_vs_1"] < 1e-5
  # Counter-example: per-device gradients average to the global ones, but projecting them
  # per device and averaging afterwards is another algorithm (PCGrad is not linear).
  # Packed rows split over the devices: the packed batch's 1-device gradients and update.
  assert g["packed_grads_vs_1"] < 1e-5 and g["packed_update_vs_1"] < 1e-5
  rows = g["packed_shards"][0][1]
  assert g["packed_shards"] == [[3, rows, 32]] * 4 and 4 * rows <= 8
  assert g["mean_local_grads_vs_global"] < 1e-5
  assert g["mean_local_updates_vs_global"] > 1e-2

  losses = [r["loss"] for r in read_metrics(one) if "loss" in r]
  restore = trainable_restorer(config)
  reference = restore(one)
  for mode in ("replicated", "fsdp"):
    run = report[mode]
    for seen in run["train_batch"]:  # Packed (the default): [T, R/4, L] on each device.
      assert seen["devices"] == 4 and len(seen["shards"]) == 4, mode
      assert seen["shards"][0][0] == 3 and seen["shards"][0][2] == 32, mode
      assert all(s == seen["shards"][0] for s in seen["shards"]), mode
    np.testing.assert_allclose(run["losses"], losses, rtol=1e-5, err_msg=mode)
    trained = restore(str(tmp_path / mode))  # Saved on 4 devices.
    # atol 1e-5: 4 devices round a step's packed rows up to a multiple of 4, 1 device to
    # the ladder's next count (`packing.round_rows`): the same tokens, plus empty rows that
    # change the order of the sums; Adam's first steps magnify that rounding on near-zero gradients.
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(reference)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=mode)
  assert report["replicated"]["param_specs"] == ["P()"]
  assert "P('data', None)" in report["fsdp"]["param_specs"]  # Split leaves, really.


def test_fsdp_splits_the_largest_divisible_axis_of_large_leaves(monkeypatch):
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 100)
  assert parallel.fsdp_spec((128, 32), 4) == P("data", None)
  assert parallel.fsdp_spec((30, 64), 4) == P(None, "data")  # 30 is not divisible by 4.
  assert parallel.fsdp_spec((30, 30), 4) == P()  # No divisible axis: replicated.
  assert parallel.fsdp_spec((8, 8), 4) == P()  # Too small to be worth splitting.
  assert parallel.fsdp_spec((), 4) == P()


def test_batch_must_split_evenly_over_the_devices(tiny_bert_dir):
  config = worker_config(tiny_bert_dir)  # seqs_per_task 8, eval.seqs_per_batch 16.
  run_spec.check_devices(config, 4)
  with pytest.raises(
    run_spec.ConfigError,
    match=r"config.train.seqs_per_task: 8 sequences "
    r"cannot be split evenly over 3 devices .* use a multiple of 3",
  ):
    run_spec.check_devices(config, 3)
  config.eval.seqs_per_batch = 18
  with pytest.raises(run_spec.ConfigError, match="config.eval.seqs_per_batch: 18"):
    run_spec.check_devices(config, 4)
  config.train.param_sharding = "zero3"
  with pytest.raises(run_spec.ConfigError, match="config.train.param_sharding: 'zero3'"):
    run_spec.build(config)


def test_single_device_batch_is_the_host_batch():
  mesh = parallel.make_mesh()
  batch = {"input_ids": np.arange(24, dtype=np.int32).reshape(3, 2, 4)}
  out = parallel.put_batch(batch, parallel.batch_sharding(mesh, 1))
  np.testing.assert_array_equal(np.asarray(out["input_ids"]), batch["input_ids"])
  assert out["input_ids"].sharding.spec == P(None, "data")


def test_a_one_task_batch_keeps_its_task_id_replicated():
  mesh = parallel.make_mesh()
  batch = {"input_ids": np.zeros((1, 2, 4), np.int32), "task": np.asarray(2, np.int32)}
  out = parallel.put_batch(batch, parallel.batch_sharding(mesh, 1))
  assert out["task"].sharding.spec == P() and int(out["task"]) == 2
  assert out["input_ids"].sharding.spec == P(None, "data")


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, None),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}, None),  # One task: one process.
    (
      {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
      {"num_processes": 2, "process_id": 1},
    ),
    ({"SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "n[1-2]"}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, {}),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, {}),
  ],
)
def test_multi_host_initialization_only_when_the_environment_says_so(monkeypatch, env, expected):
  for name in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_NTASKS",
    "SLURM_STEP_NODELIST",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
  ):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert parallel.initialize_distributed() == (expected is not None)
  assert calls == ([] if expected is None else [expected])
