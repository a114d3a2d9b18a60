"""Per-device memory of the parameters and optimizer state: replicated vs fsdp.

  python -m mtl_jax.bench --sharding [--devices=4] [--modes=lora,full] [--model=DIR]

With `train.param_sharding=replicated` every device holds every parameter and Adam moment;
with `fsdp` (mtl_jax.runtime.parallel.fsdp_spec) the large leaves are split over the devices. The
bytes per device are read from the NamedShardings the trainer gives each leaf
(`sharding.shard_shape`), so the table is what a run would place, without placing it:
a replicated BERT-base on 4 CPU devices would be 4 copies in this host's memory.
`tests/tools/test_shard_memory.py` checks the count against real arrays' shards.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mtl_jax.runtime import machine, parallel

MiB = 2**20


def per_device_bytes(tree: Any, shardings: Any, device) -> int:
  """Bytes of `tree`'s leaves (arrays or ShapeDtypeStructs) that `device` holds under
  `shardings` (a matching tree of Shardings)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    if device in sharding.device_set:
      shape = sharding.shard_shape(np.shape(leaf))
      total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def state_bytes(config, mesh, mode: str) -> dict:
  """{trainable, params, opt_state, params_total, opt_total} bytes: per device (the most
  loaded device) under `mode`, and unsharded totals."""
  from mtl_jax import train
  from mtl_jax.config import run_spec

  _, state, frozen, _ = train.init_state(run_spec.build(config))
  trees = {"params": (state.trainable, frozen), "opt_state": state.opt_state}
  out = {"trainable": int(sum(np.size(x) for x in jax.tree.leaves(state.trainable)))}
  for name, tree in trees.items():
    shardings = parallel.param_shardings(tree, mesh, mode)
    out[name] = max(per_device_bytes(tree, shardings, d) for d in mesh.devices.flat)
    out[f"{name}_total"] = int(
      sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    )
  return out


def table(rows: list[dict], header: str = "") -> str:
  lines = ([header, ""] if header else []) + [
    "| mode | param_sharding | trainable | params MiB/device | opt state MiB/device | "
    "params + opt MiB/device | vs replicated |",
    "|---|---|---|---|---|---|---|",
  ]
  replicated = {
    r["mode"]: r["params"] + r["opt_state"] for r in rows if r["sharding"] == "replicated"
  }
  for r in rows:
    both = r["params"] + r["opt_state"]
    rel = f"{both / replicated[r['mode']]:.2f}x" if r["mode"] in replicated else "-"
    lines.append(
      f"| {r['mode']} | {r['sharding']} | {r['trainable']:,} | "
      f"{r['params'] / MiB:.1f} | {r['opt_state'] / MiB:.1f} | {both / MiB:.1f} | "
      f"{rel} |"
    )
  return "\n".join(lines)


def run(modes: list[str], devices: int, model_path: str | None, model_line: str = "") -> str:
  """The table for each mode on `devices` CPU devices (forced here, before jax starts);
  `model_line` describes the model above it (the bench's)."""
  from mtl_jax.config import defaults as default

  if "jax_num_cpu_devices" in jax.config.values:
    jax.config.update("jax_num_cpu_devices", devices)
  if jax.device_count() < devices:
    raise SystemExit(
      f"error: {jax.device_count()} devices; run with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
    )
  mesh = parallel.make_mesh(jax.devices()[:devices])
  rows = []
  for mode in modes:
    config = default.get_config()
    config.model.path = model_path or config.model.path
    config.adapter.kind = mode
    for sharding in parallel.PARAM_SHARDINGS:
      rows.append({"mode": mode, "sharding": sharding, **state_bytes(config, mesh, sharding)})
  header = "\n".join(
    [
      machine.machine_line(None),
      model_line,
      f"{devices} devices; fsdp splits leaves of at least "
      f"{parallel.FSDP_MIN_SIZE} elements; f32 parameters, Adam (2 moments)",
    ]
  )
  return table(rows, header)
