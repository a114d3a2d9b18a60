"""Orbax checkpoints of the train state, atomic and resumable, plus the best dev step.

Orbax writes each step into `<step>.orbax-checkpoint-tmp-<timestamp>/` and renames it to
`<step>/` when complete, so a run killed mid-save never resumes from a half-written
checkpoint: `latest_step` only sees finished ones, and the leftover temporary directory is
deleted when the next training run opens its manager (`cleanup_tmp=True`; readers such as
export never delete, so they cannot remove a live run's save in progress). The data pipeline's position is the step
number itself (see `mtl_jax.data.batching`), and randomness is folded from (seed, step), so
params, optimizer state and step are all that resume needs.

Workdir layout: `checkpoints/` (the latest `train.keep_checkpoints` steps; resume reads the
latest), and, when dev is evaluated during training, `best_checkpoint/<step>/` (a separate
manager keeping one step: the best dev overall so far, never pruned by the latest-k
rotation) described by `best.json` ({"step", "overall", "metrics"}, replaced atomically).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _keys_to_data(tree: Any) -> Any:
  """Typed PRNG keys (e.g. in a method's optax state) are stored as their raw uint32 data."""
  return jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree: Any, like: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
      if _is_key(ref) else x, tree, like)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best_checkpoint"
BEST_JSON = "best.json"


class Checkpointer:
  """Saves every `every` steps (and on request), keeps the last `keep`, in workdir/subdir.
  Only the process that trains in the workdir should pass cleanup_tmp=True."""

  def __init__(self, workdir: str, every: int, keep: int, subdir: str = CHECKPOINTS,
               cleanup_tmp: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=max(keep, 1), create=True,
            cleanup_tmp_directories=cleanup_tmp))  # Leftovers of a save killed midway.

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) at `step` (default latest); `like` gives structure and shapes."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _keys_to_data(like))
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return _data_to_keys(out["state"], like), out["meta"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to `path` via a temporary file and a rename: readers never see half of it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_best(workdir: str) -> dict | None:
  """The workdir's best.json ({"step", "overall", "metrics"}), or None before any evaluation."""
  path = os.path.join(workdir, BEST_JSON)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def save_best(workdir: str, step: int, state: Any, metrics: dict) -> dict:
  """Saves `state` as the best checkpoint (replacing the previous best) and, once it is
  complete on disk, records it in best.json. Returns the record."""
  best = Checkpointer(workdir, 1, 1, subdir=BEST_CHECKPOINT, cleanup_tmp=True)
  for later in [s for s in best.manager.all_steps() if s > step]:
    best.manager.delete(later)  # Saved by a run killed before best.json recorded it.
  if best.latest_step() != step:
    best.save(step, state, {"step": step}, force=True)
  best.close()  # Waits for the save (and the old best's deletion) before best.json.
  record = {"step": int(step), "overall": float(metrics["overall"]),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "checkpoint": os.path.join(BEST_CHECKPOINT, str(int(step)))}
  write_json_atomic(os.path.join(workdir, BEST_JSON), record)
  return record
