"""Data parallelism: one jitted SPMD step over every device, on one host or several.

A 1-D `Mesh` of all devices with a 'data' axis. The train batch [T, S, L] is split along
S (each device encodes S/n sequences of every task); parameters and optimizer state are
replicated, or with `train.param_sharding="fsdp"` their large leaves are split along one
axis over the same devices (XLA gathers them where they are used). The step stays one
jitted function of global arrays, so every task's loss is the mean over the whole global
batch and XLA's partitioner inserts the all-reduce inside the gradient: the mtl_jax.grad
method receives the global per-task gradients, as on one device. (Projecting each
device's own gradients and averaging afterwards would be a different algorithm;
tests/runtime/test_parallel.py measures the difference.)

Multi-host: `initialize_distributed` connects the processes when the environment
describes a multi-process job (on CPU, with gloo collectives between them); every process
builds the same global batch (batches are a function of (seed, step)) and hands its own
devices their slices of it. docs/scale.md has the commands, one machine or a cluster.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
PARAM_SHARDINGS = ("replicated", "fsdp")  # config.train.param_sharding values.
# fsdp leaves smaller than this stay replicated: gathering a bias costs more than it saves.
FSDP_MIN_SIZE = 2**12


def initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-process
  job, before anything touches a device; returns whether it did.

  Recognised: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a
  cluster JAX can read them from), a SLURM step of several tasks (`srun`), Open MPI
  (`mpirun`), and multi-host Cloud TPU slices; JAX reads the details itself."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
    enable_cpu_collectives()
    jax.distributed.initialize(
      num_processes=int(count) if count else None, process_id=int(index) if index else None
    )
    return True
  if (
    (int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env)  # srun
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1  # mpirun
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  ):  # Several TPU hosts.
    enable_cpu_collectives()
    jax.distributed.initialize()
    return True
  return False


def enable_cpu_collectives() -> str | None:
  """Gives XLA:CPU a cross-process collective implementation (gloo, over TCP) unless one
  is chosen; returns the one in effect.

  Without one, a step whose all-reduce spans the devices of several CPU processes fails
  (older jax versions defaulted to none; jax 0.10 defaults to gloo). It only affects
  the CPU client, so it is harmless on GPU/TPU hosts; and it must be set before
  `jax.distributed.initialize` creates the backends, which is before the backend can be
  asked what it is."""
  values = jax.config.values
  if "jax_cpu_collectives_implementation" in values:
    if values["jax_cpu_collectives_implementation"] in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    return jax.config.values["jax_cpu_collectives_implementation"]
  if "jax_cpu_enable_gloo_collectives" in values:  # jax 0.4.2x's switch.
    jax.config.update("jax_cpu_enable_gloo_collectives", True)
    return "gloo"
  return None


def any_process(flag: bool) -> bool:
  """Whether `flag` is true in at least one process; the flag itself in a one-process job.

  Every process of a multi-process job must run the same sequence of steps (each is a
  collective), so a decision only one process sees, such as a SIGTERM that reached it a
  step earlier than the others, must be shared before anyone acts on it."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int) -> NamedSharding:
  """Splits dimension `axis` over the data axis (axis 1 of [T, S, ...] train batches,
  axis 0 of [S, ...] eval batches)."""
  return NamedSharding(mesh, P(*[None] * axis, DATA_AXIS))


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Global arrays from a host batch that every process holds whole: each device gets
  only its slice (no cross-process transfer or equality check). Entries without the split
  axis (a one-task batch's scalar task id) are replicated."""

  def put(v):
    v = np.asarray(v)
    s = sharding if v.ndim >= len(sharding.spec) else replicated(sharding.mesh)
    return jax.make_array_from_callback(v.shape, s, lambda index: v[index])

  return {k: put(v) for k, v in batch.items()}


def fsdp_spec(shape: tuple[int, ...], num_devices: int) -> P:
  """The largest axis divisible by `num_devices` goes over the data axis; leaves smaller
  than FSDP_MIN_SIZE (or with no such axis) stay replicated."""
  if int(np.prod(shape)) < FSDP_MIN_SIZE:
    return P()
  axes = [
    a for a in sorted(range(len(shape)), key=lambda a: -shape[a]) if shape[a] % num_devices == 0
  ]
  return P(*[DATA_AXIS if a == axes[0] else None for a in range(len(shape))]) if axes else P()


def param_shardings(tree: Any, mesh: Mesh, mode: str) -> Any:
  """A NamedSharding per leaf: replicated, or fsdp_spec's split when mode is "fsdp"."""

  def sharding(x):
    spec = fsdp_spec(np.shape(x), mesh.size) if mode == "fsdp" else P()
    return NamedSharding(mesh, spec)

  return jax.tree.map(sharding, tree)


def data_parallel(fn, mesh: Mesh, batch_axis: int):
  """fn(params, batch, *args) jitted with the batch split on `batch_axis` and every output
  replicated, so that each process can read it whole (evaluation)."""
  jitted = jax.jit(fn, out_shardings=replicated(mesh))
  sharding = batch_sharding(mesh, batch_axis)
  return lambda params, batch, *args: jitted(params, put_batch(batch, sharding), *args)
