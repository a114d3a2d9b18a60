"""Per-device memory of parameters and optimizer state (mtl_jax.shard_memory): the bytes
read from the shardings are those of the placed arrays' shards, and fsdp divides them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mtl_jax.tools import shard_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run with 4 forced CPU devices (the flag must be set before jax starts).
_SCRIPT = """
import json, sys
import jax
sys.path[:0] = [{root!r}, {tests!r}]
from mtl_jax import train
from mtl_jax.config import run_spec
from mtl_jax.runtime import parallel
from mtl_jax.tools import shard_memory
from conftest import tiny_config
parallel.FSDP_MIN_SIZE = 64  # Also split the tiny model's LoRA and head leaves.
config = tiny_config({model!r})
config.adapter.kind = {mode!r}
mesh = parallel.make_mesh()
out = {{}}
for sharding in parallel.PARAM_SHARDINGS:
  counted = shard_memory.state_bytes(config, mesh, sharding)
  _, state, frozen, _ = train.init_state(run_spec.build(config))
  placed = jax.device_put(state, parallel.param_shardings(state, mesh, sharding))
  frozen = jax.device_put(frozen, parallel.param_shardings(frozen, mesh, sharding))
  def on_device(tree, d):
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == d)
  out[sharding] = {{"counted": counted, "devices": jax.device_count(),
                   "params": max(on_device((placed.trainable, frozen), d) for d in jax.devices()),
                   "opt_state": max(on_device(placed.opt_state, d) for d in jax.devices())}}
print(json.dumps(out))
"""


def _measure(model_dir: str, mode: str) -> dict:
  script = _SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), model=model_dir, mode=mode)
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
  env = dict(os.environ, XLA_FLAGS=flags.strip())
  out = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_bytes_read_from_shardings_are_the_placed_shards(tiny_bert_dir):
  report = _measure(tiny_bert_dir, "full")
  for sharding, r in report.items():
    assert r["devices"] == 4
    assert r["counted"]["params"] == r["params"], sharding
    assert r["counted"]["opt_state"] == r["opt_state"], sharding
  replicated, fsdp = report["replicated"]["counted"], report["fsdp"]["counted"]
  assert replicated["params"] == replicated["params_total"]  # Every device holds it all.
  # Split leaves are a quarter each; only the leaves below 64 elements stay whole.
  assert replicated["params"] / 4 <= fsdp["params"] < 0.35 * replicated["params"]
  assert replicated["opt_state"] / 4 <= fsdp["opt_state"] < 0.35 * replicated["opt_state"]


def test_table_compares_each_mode_with_its_replicated_row():
  rows = [
    {
      "mode": "full",
      "sharding": s,
      "trainable": 10,
      "params": p * 2**20,
      "opt_state": 2 * p * 2**20,
    }
    for s, p in (("replicated", 4.0), ("fsdp", 1.0))
  ]
  text = shard_memory.table(rows, header="machine: x")
  assert text.startswith("machine: x\n")
  assert "| full | fsdp | 10 | 1.0 | 2.0 | 3.0 | 0.25x |" in text
